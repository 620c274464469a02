import { createPublicKey, type KeyObject } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { databaseHost, isLoopbackHost, sslParameterIn } from './config/database-url.ts'
import type { DatabaseTls } from './db/tls.ts'

/** A limit: a whole number from `minimum`, or "unlimited". */
function LimitValue (fallback: number | undefined, minimum: number) {
  return Type.Union([Type.Integer({ minimum }), Type.Literal('unlimited')], {
    ...(fallback !== undefined && { default: fallback }),
    description: `a whole number from ${minimum}, or unlimited`,
  })
}

const PostgresUrl = Type.String({ pattern: '^postgres(ql)?://', description: 'a postgres:// connection URL' })

export const ConfigSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development',
  }),
  HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), {
    default: 'info',
  }),
  /** Owner connection: migrations and operator work (provisioning, export, erasure). */
  DATABASE_URL: Type.Optional(PostgresUrl),
  /** Runtime connection as the `app` role: every tenant request. */
  APP_DATABASE_URL: Type.Optional(PostgresUrl),
  /** Operator bearer token for /admin/v1. */
  ADMIN_TOKEN: Type.Optional(Type.String({ minLength: 32, maxLength: 512 })),
  /** Bearer token for GET /metrics (unset: the ADMIN_TOKEN is accepted there). */
  METRICS_TOKEN: Type.Optional(Type.String({
    minLength: 32, maxLength: 512, description: 'a secret of at least 32 characters',
  })),
  /** JWT users: HS256 with this shared secret (at least 32 characters)... */
  JWT_SECRET: Type.Optional(Type.String({
    minLength: 32, maxLength: 4096, description: 'a secret of at least 32 characters',
  })),
  /** ...or RS256/ES256 with this PEM public key (literal "\n" sequences are accepted for newlines). */
  JWT_PUBLIC_KEY: Type.Optional(Type.String({
    pattern: '-----BEGIN PUBLIC KEY-----', description: 'a PEM public key (-----BEGIN PUBLIC KEY-----)',
  })),
  JWT_ALGORITHM: Type.Optional(Type.Union([Type.Literal('HS256'), Type.Literal('RS256'), Type.Literal('ES256')])),
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1 })),
  /** HMAC-SHA256 key that signs tenant exports and verifies them on import (generated outside production). */
  EXPORT_SIGNING_KEY: Type.Optional(Type.String({
    minLength: 43, maxLength: 4096, description: 'a secret of at least 43 characters (e.g. openssl rand -base64 32)',
  })),
  /**
   * How long a verified credential lets requests skip waiting for its check (0: never). Safe to keep
   * long: every request still reads the credential fresh (in the binding) and confirms it.
   */
  CREDENTIAL_CACHE_TTL_MS: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 300_000 }),
  /**
   * How long a placement move or an erasure waits, after notifying, for every instance's credential
   * cache to let go of the tenant.
   */
  CACHE_GRACE_MS: Type.Integer({ minimum: 0, maximum: 60_000, default: 1000 }),
  /**
   * TLS of every database connection (owner, runtime, LISTEN): require encrypts without checking the
   * server; verify-ca checks its certificate against DATABASE_SSL_CA_FILE; verify-full also checks
   * that the certificate names the URL's host.
   */
  DATABASE_SSL_MODE: Type.Union([Type.Literal('disable'), Type.Literal('require'), Type.Literal('verify-ca'),
    Type.Literal('verify-full')], {
    default: 'disable', description: 'disable, require, verify-ca or verify-full',
  }),
  /** PEM file of the CA(s) that sign the database server's certificate; read once at start-up. */
  DATABASE_SSL_CA_FILE: Type.Optional(Type.String({ minLength: 1 })),
  /** In production, allow unencrypted connections to a database that is not on this host (refused otherwise). */
  DATABASE_ALLOW_PLAINTEXT: Type.Boolean({ default: false }),
  /**
   * A direct connection for LISTEN (defaults to APP_DATABASE_URL; set it when that URL goes through a
   * transaction-pooling PgBouncer).
   */
  DB_LISTEN_URL: Type.Optional(PostgresUrl),
  /** How often the batched last_used_at of API keys is written. */
  KEY_USAGE_FLUSH_MS: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 15_000 }),
  DB_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
  DB_OPERATOR_POOL_MAX: Type.Integer({ minimum: 1, maximum: 100, default: 2 }),
  /**
   * Named prepared statements on the runtime connections (turn off behind a PgBouncer older than 1.21
   * in transaction mode).
   */
  DB_PREPARED_STATEMENTS: Type.Boolean({ default: true }),
  DB_CONNECT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 60_000, default: 2000 }),
  /** Requests waiting for a runtime connection beyond this many are refused at once with 503 (load shedding). */
  DB_POOL_QUEUE_MAX: Type.Integer({ minimum: 0, maximum: 100_000, default: 64 }),
  /** statement_timeout of every tenant transaction (transaction-local). */
  DB_STATEMENT_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 5000 }),
  /** idle_in_transaction_session_timeout of every tenant transaction (transaction-local). */
  DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 10_000 }),
  /** A tenant request still running after this long is cancelled (its query too) and answered 503. */
  REQUEST_DEADLINE_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 10_000 }),
  /** Event-loop delay past which requests are shed with 503 (0: off). */
  MAX_EVENT_LOOP_DELAY_MS: Type.Integer({ minimum: 0, maximum: 60_000, default: 1000 }),
  /** Origins allowed by CORS, comma-separated (empty: no cross-origin access). */
  CORS_ORIGINS: Type.String({
    default: '', pattern: '^(https?://[^,\\s]+(,https?://[^,\\s]+)*)?$', description: 'comma-separated http(s) origins',
  }),
  /** Where the embedded PostgreSQL and the generated secrets live when no DATABASE_URL is given. */
  DATA_DIR: Type.String({ minLength: 1, default: '.data' }),
  EMBEDDED_PG_PORT: Type.Integer({ minimum: 1, maximum: 65535, default: 54329 }),
  /** Apply pending migrations at start-up (under the migration lock, so several instances may start at once). */
  // How long events (GET /v1/events) are kept; the maintenance sweep deletes older ones.
  EVENT_RETENTION_DAYS: Type.Integer({ minimum: 1, maximum: 3650, default: 30 }),
  MIGRATE_ON_START: Type.Boolean({ default: true }),
  /** Run the job worker (webhooks, exports) inside this process; off when it runs on its own (npm run worker). */
  RUN_WORKER: Type.Boolean({ default: true }),
  /**
   * The worker's connection, as the runtime role: a direct one (it LISTENs for new jobs). Defaults to
   * DB_LISTEN_URL, then APP_DATABASE_URL.
   */
  WORKER_DATABASE_URL: Type.Optional(PostgresUrl),
  /** Jobs one worker process runs at once. */
  WORKER_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 256, default: 16 }),
  /** How often the worker looks for jobs whose time has come (retries); new jobs are announced at once. */
  WORKER_POLL_INTERVAL_MS: Type.Integer({ minimum: 50, maximum: 60_000, default: 1000 }),
  /** A worker silent for this long is presumed dead: the jobs it had taken are handed to others. */
  WORKER_LEASE_MS: Type.Integer({ minimum: 500, maximum: 3_600_000, default: 30_000 }),
  /** How long SIGTERM waits for running jobs before handing them back to the queue. */
  WORKER_SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, maximum: 600_000, default: 10_000 }),
  /**
   * Key (32 bytes, base64) that encrypts webhook signing secrets at rest; generated into DATA_DIR
   * outside production.
   */
  WEBHOOK_SECRET_KEY: Type.Optional(Type.String({
    minLength: 43, maxLength: 44, description: '32 bytes in base64 (e.g. openssl rand -base64 32)',
  })),
  /** Deliver to private, loopback and link-local addresses and over plain http (development and tests only). */
  WEBHOOK_ALLOW_PRIVATE_TARGETS: Type.Boolean({ default: false }),
  WEBHOOK_CONNECT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 60_000, default: 3000 }),
  /** A delivery attempt's whole deadline: connect, send, and read the response. */
  WEBHOOK_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120_000, default: 10_000 }),
  /** Attempts per delivery; with the default base, retries span about a day. */
  WEBHOOK_MAX_ATTEMPTS: Type.Integer({ minimum: 1, maximum: 20, default: 9 }),
  /** The first retry's delay; each next one is 4 times longer (at most 12 hours), with ±20% jitter. */
  WEBHOOK_RETRY_BASE_MS: Type.Integer({ minimum: 10, maximum: 3_600_000, default: 15_000 }),
  /** An endpoint whose attempts have all failed for this long is disabled (with a webhook_endpoint.disabled event). */
  WEBHOOK_DISABLE_AFTER_MS: Type.Integer({ minimum: 1000, maximum: 30 * 86_400_000, default: 3 * 86_400_000 }),
  /** After a secret rotation, how long the previous secret keeps signing too. */
  WEBHOOK_SECRET_GRACE_MS: Type.Integer({ minimum: 0, maximum: 30 * 86_400_000, default: 86_400_000 }),
  /** How long a tenant's own export (POST /v1/exports) can be downloaded once ready. */
  TENANT_EXPORT_TTL_MS: Type.Integer({ minimum: 60_000, maximum: 30 * 86_400_000, default: 86_400_000 }),
  /**
   * Default limits of a tenant whose plan and overrides leave them unset (docs/limits.md). Rates are per
   * tenant: a sustained rate (requests per second, averaged over a minute) and a burst (requests in any
   * one second); "unlimited" turns one off.
   */
  LIMIT_REQUESTS_PER_SECOND: LimitValue(100, 1),
  LIMIT_BURST: LimitValue(200, 1),
  /** Runtime pool connections one tenant may hold at once (default: TENANT_POOL_SHARE of DB_POOL_MAX). */
  LIMIT_CONCURRENT_REQUESTS: Type.Optional(LimitValue(undefined, 1)),
  /** Quotas per billing period (UTC calendar month) or of live objects; unset: unlimited. */
  LIMIT_INVOICES_CREATED: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_CUSTOMERS: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_API_KEYS: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_MEMBERS: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_WEBHOOK_ENDPOINTS: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_EVENTS_DELIVERED: Type.Optional(LimitValue(undefined, 0)),
  LIMIT_EXPORT_BYTES: Type.Optional(LimitValue(undefined, 0)),
  /** The share of the runtime pool (DB_POOL_MAX) one tenant may hold when its limits do not say. */
  TENANT_POOL_SHARE: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.5 }),
  /** A tenant's requests waiting for its share beyond this many are refused with 429 at once. */
  TENANT_QUEUE_MAX: Type.Integer({ minimum: 0, maximum: 100_000, default: 32 }),
  /**
   * How long a request refused for its tenant's rate or share waits before its 429 is sent (never past its
   * Retry-After): a client that retries at once slows down instead of spinning. 0: at once.
   */
  LIMIT_REFUSAL_DELAY_MS: Type.Integer({ minimum: 0, maximum: 10_000, default: 1000 }),
  /** Shared rate-limit counters (redis:// or rediss://), so limits hold across instances; unset: in-process. */
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://', description: 'a redis:// or rediss:// URL' })),
  /** When Redis cannot answer: refuse requests (503) instead of letting them through uncounted. */
  RATE_LIMIT_FAIL_CLOSED: Type.Boolean({ default: false }),
  /** How long a rate-limit decision waits for Redis before failing open (or closed). */
  REDIS_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 10_000, default: 250 }),
  /** Failed authentications one client address may make per minute before its requests get 429. */
  AUTH_FAILURES_PER_MINUTE: LimitValue(30, 1),
  /** How often per-tenant request counts are written: the most a crash can lose of them. */
  USAGE_FLUSH_MS: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000 }),
  /** Worker processes serving requests (node:cluster); 1 serves from the main process. */
  WEB_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  BODY_LIMIT_BYTES: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 1024 * 1024 }),
})

export type Config = Static<typeof ConfigSchema>

/** A configuration problem; the message is one line and names the variable. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

const SECRET_VARS = new Set([
  'DATABASE_URL', 'APP_DATABASE_URL', 'DB_LISTEN_URL', 'ADMIN_TOKEN', 'METRICS_TOKEN', 'JWT_SECRET',
  'EXPORT_SIGNING_KEY', 'WORKER_DATABASE_URL', 'WEBHOOK_SECRET_KEY', 'REDIS_URL',
])

/**
 * What a variable must hold, for its one-line error: the variable's description, else the values a
 * union of literals allows, else TypeBox's own message (which already starts with "Expected").
 */
function expectation (description: string | undefined, failed: object, message: string): string {
  if (description !== undefined) return `expected ${description}`
  const branches = (failed as { anyOf?: Array<{ const?: unknown }> }).anyOf
  const values = branches?.map((branch) => branch.const)
  if (values !== undefined && values.every((v) => typeof v === 'string')) return `expected one of ${values.join(', ')}`
  return message.charAt(0).toLowerCase() + message.slice(1)
}

/**
 * Reads the configuration from an environment-like object. Unknown variables are ignored,
 * empty strings count as unset, and the first invalid value throws a ConfigError that
 * names the variable (and echoes the value unless it may hold a secret).
 */
export function loadConfig (
  env: Record<string, string | undefined> = process.env, purpose: 'server' | 'worker' = 'server'
): Config {
  const input: Record<string, unknown> = {}
  for (const key of Object.keys(ConfigSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') input[key] = value
  }
  const converted = Value.Default(ConfigSchema, Value.Convert(ConfigSchema, input)) as Record<string, unknown>
  const first = Value.Errors(ConfigSchema, converted).First()
  if (first !== undefined) {
    const name = first.path.split('/')[1] ?? '(root)'
    const raw = input[name]
    const shown = raw === undefined || SECRET_VARS.has(name) ? '' : ` (got ${JSON.stringify(raw)})`
    const schema = (ConfigSchema.properties as Record<string, { description?: string }>)[name]
    const expected = expectation(schema?.description, first.schema, first.message)
    throw new ConfigError(`invalid environment variable ${name}: ${expected}${shown}`)
  }
  const config = converted as Config
  if ((config.DATABASE_URL === undefined) !== (config.APP_DATABASE_URL === undefined)) {
    const missing = config.DATABASE_URL === undefined ? 'DATABASE_URL' : 'APP_DATABASE_URL'
    throw new ConfigError(`invalid environment variable ${missing}: set both DATABASE_URL (owner) and ` +
      'APP_DATABASE_URL (runtime role), or neither for the embedded database')
  }
  if (config.JWT_SECRET !== undefined && config.JWT_PUBLIC_KEY !== undefined) {
    throw new ConfigError('invalid environment variable JWT_PUBLIC_KEY: set JWT_SECRET (HS256) or ' +
      'JWT_PUBLIC_KEY (RS256/ES256), not both')
  }
  if (config.JWT_ALGORITHM !== undefined &&
    (config.JWT_ALGORITHM === 'HS256') !== (config.JWT_PUBLIC_KEY === undefined)) {
    throw new ConfigError(`invalid environment variable JWT_ALGORITHM: ${config.JWT_ALGORITHM} needs ` +
      (config.JWT_ALGORITHM === 'HS256' ? 'JWT_SECRET' : 'JWT_PUBLIC_KEY'))
  }
  if (config.JWT_PUBLIC_KEY !== undefined) checkJwtPublicKey(config.JWT_PUBLIC_KEY, config.JWT_ALGORITHM ?? 'RS256')
  // The worker (npm run worker) serves no operator API.
  if (config.NODE_ENV === 'production' && config.ADMIN_TOKEN === undefined && purpose === 'server') {
    throw new ConfigError('invalid environment variable ADMIN_TOKEN: required in production (at least 32 characters)')
  }
  const workerUrl = purpose === 'worker' && config.WORKER_DATABASE_URL !== undefined
  if (config.NODE_ENV === 'production' && config.DATABASE_URL === undefined && !workerUrl) {
    throw new ConfigError('invalid environment variable DATABASE_URL: required in production ' +
      '(the embedded database is for development)')
  }
  if (config.NODE_ENV === 'production' && config.WEBHOOK_ALLOW_PRIVATE_TARGETS) {
    throw new ConfigError('invalid environment variable WEBHOOK_ALLOW_PRIVATE_TARGETS: not in production ' +
      '(it lets tenants make the server call private addresses)')
  }
  checkDatabaseTls(config, env)
  return config
}

/** The PEM as configured: literal "\n" sequences (one-line environment values) become newlines. */
const publicKeyPem = (value: string): string => value.replaceAll('\\n', '\n')

/**
 * JWT_PUBLIC_KEY must parse as a public key of the kind JWT_ALGORITHM verifies with: an RSA key of at
 * least 2048 bits for RS256, a P-256 EC key for ES256. Checked at start-up, so a bad key stops the
 * server with one line instead of failing on the first token.
 */
function checkJwtPublicKey (value: string, algorithm: 'RS256' | 'ES256' | 'HS256'): void {
  const fail = (why: string): never => { throw new ConfigError(`invalid environment variable JWT_PUBLIC_KEY: ${why}`) }
  let key: KeyObject
  try {
    key = createPublicKey(publicKeyPem(value))
  } catch {
    return fail('expected a PEM public key (-----BEGIN PUBLIC KEY-----) that parses')
  }
  const details = key.asymmetricKeyDetails ?? {}
  if (algorithm === 'RS256') {
    if (key.asymmetricKeyType !== 'rsa') {
      fail(`a key of type ${key.asymmetricKeyType ?? 'unknown'} cannot verify RS256 tokens ` +
        '(set JWT_ALGORITHM to match the key)')
    }
    if ((details.modulusLength ?? 0) < 2048) {
      fail(`the RSA key has ${details.modulusLength ?? 0} bits; RS256 needs at least 2048`)
    }
  } else if (algorithm === 'ES256') {
    if (key.asymmetricKeyType !== 'ec') {
      fail(`a key of type ${key.asymmetricKeyType ?? 'unknown'} cannot verify ES256 tokens ` +
        '(set JWT_ALGORITHM to match the key)')
    }
    if (details.namedCurve !== 'prime256v1') {
      fail(`ES256 needs a P-256 key, not ${details.namedCurve ?? 'an unknown curve'}`)
    }
  }
}

const DATABASE_URL_VARS = ['DATABASE_URL', 'APP_DATABASE_URL', 'DB_LISTEN_URL'] as const

/**
 * TLS comes from DATABASE_SSL_MODE and DATABASE_SSL_CA_FILE alone. TLS parameters in a URL are
 * refused: pg would apply them over those (and reads sslmode=require as verify-full, unlike libpq).
 * In production, plaintext to a database that is not on this host needs DATABASE_ALLOW_PLAINTEXT=true.
 */
function checkDatabaseTls (config: Config, env: Record<string, string | undefined>): void {
  const fail = (name: string, why: string): never => {
    throw new ConfigError(`invalid environment variable ${name}: ${why}`)
  }
  const mode = config.DATABASE_SSL_MODE
  for (const name of DATABASE_URL_VARS) {
    const parameter = config[name] === undefined ? undefined : sslParameterIn(config[name])
    if (parameter !== undefined) {
      fail(name, `remove ${parameter} from the URL: TLS is set for every connection by DATABASE_SSL_MODE ` +
        'and DATABASE_SSL_CA_FILE')
    }
  }
  if (config.DATABASE_SSL_CA_FILE !== undefined && (mode === 'disable' || mode === 'require')) {
    fail('DATABASE_SSL_CA_FILE', `DATABASE_SSL_MODE=${mode} does not check the server's certificate; ` +
      'set DATABASE_SSL_MODE=verify-full to use the CA')
  }
  if (mode === 'verify-ca' && config.DATABASE_SSL_CA_FILE === undefined) {
    fail('DATABASE_SSL_CA_FILE', 'required with DATABASE_SSL_MODE=verify-ca ' +
      '(without a host-name check, any certificate a public CA signs would pass)')
  }
  if (mode !== 'disable' && config.DATABASE_URL === undefined) {
    fail('DATABASE_SSL_MODE', 'the embedded database does not use TLS; ' +
      'set DATABASE_URL and APP_DATABASE_URL to a server that does')
  }
  if (config.NODE_ENV !== 'production' || mode !== 'disable' || config.DATABASE_ALLOW_PLAINTEXT) return
  for (const name of DATABASE_URL_VARS) {
    const url = config[name]
    const host = url === undefined ? 'localhost' : databaseHost(url, env)
    if (host === undefined || !isLoopbackHost(host)) {
      fail('DATABASE_SSL_MODE', `${name} reaches ${host ?? 'its host'} without TLS in production; ` +
        'set DATABASE_SSL_MODE=verify-full and DATABASE_SSL_CA_FILE, ' +
        'or DATABASE_ALLOW_PLAINTEXT=true to accept an unencrypted connection')
    }
  }
}

export interface JwtSettings {
  algorithm: 'HS256' | 'RS256' | 'ES256'
  /** The HS256 secret or the PEM public key. */
  key: string
  issuer?: string | undefined
  audience?: string | undefined
}

/** The JWT verification settings the environment asks for, or undefined when JWT users are off. */
export function jwtSettings (config: Config, fallbackSecret?: string): JwtSettings | undefined {
  const common = { issuer: config.JWT_ISSUER, audience: config.JWT_AUDIENCE }
  if (config.JWT_PUBLIC_KEY !== undefined) {
    return { algorithm: config.JWT_ALGORITHM ?? 'RS256', key: publicKeyPem(config.JWT_PUBLIC_KEY), ...common }
  }
  const secret = config.JWT_SECRET ?? fallbackSecret
  return secret === undefined ? undefined : { algorithm: 'HS256', key: secret, ...common }
}

/** Configuration once the database URLs and secrets are known (from the environment or generated). */
export type ResolvedConfig = Config &
  { DATABASE_URL: string, APP_DATABASE_URL: string, ADMIN_TOKEN: string, jwt: JwtSettings | undefined } &
  { databaseTls: DatabaseTls }
