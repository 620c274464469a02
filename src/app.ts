import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { ResolvedConfig } from './config.ts'
import type { QueryListener } from './db/database.ts'
import { unavailable } from './errors.ts'
import dbPlugin from './plugins/external/db.ts'
import httpHardening from './plugins/external/http-hardening.ts'
import jwtPlugin from './plugins/external/jwt.ts'
import metricsPlugin from './plugins/external/metrics.ts'
import swaggerPlugin from './plugins/external/swagger.ts'
import errorsPlugin, { clientErrorHandler, frameworkErrors } from './plugins/app/errors.ts'
import credentialCachePlugin from './plugins/app/credential-cache.ts'
import keyUsagePlugin from './plugins/app/key-usage.ts'
import tenantLimitsPlugin from './plugins/app/tenant-limits.ts'
import rateLimitPlugin, { rateLimitOptions } from './plugins/app/rate-limit.ts'
import usageMeterPlugin from './plugins/app/usage-meter.ts'
import fairSharePlugin from './plugins/app/fair-share.ts'
import { defaultLimits, quotaDefaultsSetting } from './limits/limits.ts'
import adminV1 from './routes/admin/v1/index.ts'
import service from './routes/service/index.ts'
import v1 from './routes/v1/index.ts'
import { SHARED_SCHEMAS } from './schemas/shared.ts'
import { webhookSettings } from './webhooks/settings.ts'
import { emptyJsonAsNoBody, refuseUndeclaredBody, validatorFactory } from './validation.ts'

/**
 * The resolved configuration (src/config.ts: every default applied there, once). Optional values
 * stay meaningful: without EXPORT_SIGNING_KEY tenant exports are refused, without METRICS_TOKEN
 * /metrics takes the ADMIN_TOKEN, without DB_LISTEN_URL the cache listens on APP_DATABASE_URL.
 */
export type AppConfig = ResolvedConfig

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/**
 * Builds the whole application with its production options. Tests call this same function and
 * use `inject`, so what they validate is exactly what production runs.
 */
export interface BuildOptions {
  /** Where log lines go (default: stdout). Tests read the access-decision audit from here. */
  logStream?: NodeJS.WritableStream
  /** Sees every statement sent on the runtime connections. */
  onQuery?: QueryListener
  /** Starts the rate limits' Redis keys (default rowfence:rl): test files sharing one Redis keep apart. */
  rateLimitKeyPrefix?: string
}

export async function buildApp (config: AppConfig, options: BuildOptions = {}): Promise<FastifyInstance> {
  const limits = defaultLimits(config)
  const app = Fastify({
    logger: {
      level: config.LOG_LEVEL,
      redact: { paths: ['req.headers.authorization', 'req.headers.cookie'], censor: '[redacted]' },
      ...(options.logStream !== undefined && { stream: options.logStream }),
    },
    bodyLimit: config.BODY_LIMIT_BYTES,
    // A caller may pass its own x-request-id (it shows up in our logs and error responses);
    // anything that is not a short token is replaced.
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id']
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
    },
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 72_000,
    // Requests during shutdown are refused by our own hook below, as problem+json.
    return503OnClosing: false,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // A path parameter is checked before it is decoded: 768 leaves room for the longest one the
    // schemas accept (a 255-character user_id, percent-encoded). Longer ones are a 414 problem.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 768 },
    // Errors raised before any hook runs (routing, Node's HTTP parser) are problem+json too.
    frameworkErrors,
    clientErrorHandler,
    // Our two Ajv rules (src/validation.ts), to which Fastify hands every context's shared schemas
    // (addSchema), as it does to its own serializer.
    schemaController: { compilersFactory: { buildValidator: validatorFactory } },
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Before any route: response schemas refer to these by $id (src/schemas/shared.ts).
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema)
  app.addHook('preValidation', refuseUndeclaredBody)
  // The API speaks JSON only: without this, Fastify's built-in text/plain parser would hand a string
  // to validation (400) where docs/api.md promises 415 for a wrong content type.
  app.removeContentTypeParser('text/plain')
  // Fastify's own JSON parser, with the poisoning options above; an empty body on a bodiless operation is no body.
  const json = emptyJsonAsNoBody(app.getDefaultJsonParser('error', 'error'))
  app.addContentTypeParser('application/json', { parseAs: 'string' }, json)
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  // Graceful shutdown (app.close(), on SIGTERM): requests in flight finish; new ones get a 503 to
  // retry elsewhere; every response sent meanwhile closes its connection, so that keep-alive
  // connections do not hold the shutdown open until their idle timeout.
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onRequest', async (request) => {
    if (closing) {
      request.log.info({ event: 'shutdown_refused' }, 'refused: the server is shutting down')
      throw unavailable('the server is shutting down; retry shortly', 1)
    }
  })
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close')
  })

  // Ecosystem plugins, then our shared plugins, then routes (Fastify's documented order).
  await app.register(httpHardening, {
    corsOrigins: config.CORS_ORIGINS.split(',').filter((o) => o !== ''),
    maxEventLoopDelayMs: config.MAX_EVENT_LOOP_DELAY_MS,
  })
  await app.register(dbPlugin, {
    appDatabaseUrl: config.APP_DATABASE_URL,
    ownerDatabaseUrl: config.DATABASE_URL,
    tls: config.databaseTls,
    poolMax: config.DB_POOL_MAX,
    operatorPoolMax: config.DB_OPERATOR_POOL_MAX,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    preparedStatements: config.DB_PREPARED_STATEMENTS,
    onQuery: options.onQuery,
    limits: {
      maxWaiting: config.DB_POOL_QUEUE_MAX,
      timeouts: {
        statementMs: config.DB_STATEMENT_TIMEOUT_MS,
        idleInTransactionMs: config.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        defaultLimits: quotaDefaultsSetting(limits),
      },
      deadlineMs: config.REQUEST_DEADLINE_MS,
    },
  })
  await app.register(metricsPlugin, { token: config.METRICS_TOKEN ?? config.ADMIN_TOKEN })
  await app.register(jwtPlugin, { settings: config.jwt })
  await app.register(swaggerPlugin)
  await app.register(errorsPlugin)
  await app.register(keyUsagePlugin, { flushEveryMs: config.KEY_USAGE_FLUSH_MS })
  await app.register(credentialCachePlugin, {
    ttlMs: config.CREDENTIAL_CACHE_TTL_MS,
    listenUrl: config.DB_LISTEN_URL ?? config.APP_DATABASE_URL,
    tls: config.databaseTls,
  })

  await app.register(tenantLimitsPlugin, { defaults: limits, refusalDelayMs: config.LIMIT_REFUSAL_DELAY_MS })
  await app.register(rateLimitPlugin, rateLimitOptions(config, options.rateLimitKeyPrefix))
  await app.register(usageMeterPlugin, { flushEveryMs: config.USAGE_FLUSH_MS })
  await app.register(fairSharePlugin, { queueMax: config.TENANT_QUEUE_MAX })

  await app.register(service)
  await app.register(v1, { prefix: '/v1', webhooks: webhookSettings(config), exportTtlMs: config.TENANT_EXPORT_TTL_MS })
  await app.register(adminV1, {
    prefix: '/admin/v1',
    adminToken: config.ADMIN_TOKEN,
    cacheGraceMs: config.CACHE_GRACE_MS,
    exportSigningKey: config.EXPORT_SIGNING_KEY,
    eventRetentionDays: config.EVENT_RETENTION_DAYS,
  })
  return app
}
