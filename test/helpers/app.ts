import { randomBytes } from 'node:crypto'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { buildApp, type AppConfig, type BuildOptions } from '../../src/app.ts'
import { loadConfig } from '../../src/config.ts'
import { PLAINTEXT } from '../../src/db/tls.ts'
import { createTestDatabase, type TestDatabase } from './db.ts'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** The HS256 secret test apps verify user tokens with (see signUserToken in ./tokens.ts). */
export const TEST_JWT_SECRET = 'test-only-jwt-secret-0123456789abcdef'

/** The EXPORT_SIGNING_KEY of test apps and of the CLIs the tests run (runNpmScript), so their exports agree. */
export const TEST_EXPORT_SIGNING_KEY = 'test-only-export-signing-key-0123456789abcdefghij'

/** The WEBHOOK_SECRET_KEY of test apps (base64 of the 32 bytes `test-only-webhook-secret-key-32b`). */
export const TEST_WEBHOOK_SECRET_KEY = 'dGVzdC1vbmx5LXdlYmhvb2stc2VjcmV0LWtleS0zMmI='

export interface TestApp {
  app: FastifyInstance
  db: TestDatabase
  adminToken: string
}

/**
 * The production app (same buildApp, same options) on a database of the test's own, connected as
 * the runtime role `app`: RLS applies to every query the tests make through it.
 */
export async function buildTestApp (
  t: Teardown,
  overrides: Partial<AppConfig> = {},
  database?: TestDatabase,
  options: BuildOptions = {}
): Promise<TestApp> {
  const db = database ?? await createTestDatabase(t)
  const adminToken = randomBytes(32).toString('base64url')
  const config: AppConfig = {
    // Every default as the server resolves it (an empty environment), then the test's own values.
    ...loadConfig({}),
    NODE_ENV: 'test',
    LOG_LEVEL: (process.env.TEST_LOG_LEVEL as AppConfig['LOG_LEVEL'] | undefined) ?? 'silent',
    DATABASE_URL: db.ownerUrl,
    APP_DATABASE_URL: db.appUrl,
    ADMIN_TOKEN: adminToken,
    DB_POOL_MAX: 5,
    DB_OPERATOR_POOL_MAX: 2,
    DB_CONNECT_TIMEOUT_MS: 5000,
    BODY_LIMIT_BYTES: 1024 * 1024,
    KEY_USAGE_FLUSH_MS: 60_000,
    CREDENTIAL_CACHE_TTL_MS: 10_000,
    CACHE_GRACE_MS: 50,
    // Load shedding is tested on its own (http-hardening.test.ts): elsewhere a busy machine, or the
    // compiling of test modules in the same process, would shed the requests under test.
    MAX_EVENT_LOOP_DELAY_MS: 0,
    // Limits are tested on their own (test/limits): elsewhere a test's bursts of one tenant's
    // requests must not be refused for their rate or wait for the tenant's share of a small pool.
    LIMIT_REQUESTS_PER_SECOND: 'unlimited',
    LIMIT_BURST: 'unlimited',
    LIMIT_CONCURRENT_REQUESTS: 'unlimited',
    TENANT_QUEUE_MAX: 10_000,
    AUTH_FAILURES_PER_MINUTE: 'unlimited',
    LIMIT_REFUSAL_DELAY_MS: 0,
    // Request counts are written when a test flushes them (app.usageMeter.flush()) or at close: a flush in the
    // middle of a test would change the usage rows a test compares (exports, for one).
    USAGE_FLUSH_MS: 600_000,
    jwt: { algorithm: 'HS256', key: TEST_JWT_SECRET },
    databaseTls: PLAINTEXT,
    EXPORT_SIGNING_KEY: TEST_EXPORT_SIGNING_KEY,
    WEBHOOK_SECRET_KEY: TEST_WEBHOOK_SECRET_KEY,
    ...overrides,
  }
  const app = await buildApp(config, options)
  t.teardown(() => app.close())
  return { app, db, adminToken }
}

export interface ProvisionedTenant {
  id: string
  slug: string
  key: string
  keyId: string
}

/** Creates a tenant through the operator API, exactly as an operator would. */
export async function provisionTenant (
  t: TestApp,
  slug = `t-${randomBytes(4).toString('hex')}`
): Promise<ProvisionedTenant> {
  const res = await t.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${t.adminToken}` },
    payload: { name: `Tenant ${slug}`, slug },
  })
  if (res.statusCode !== 201) throw new Error(`provisioning failed: ${res.statusCode} ${res.body}`)
  const body = res.json<{ tenant: { id: string, slug: string }, api_key: { id: string, key: string } }>()
  return { id: body.tenant.id, slug: body.tenant.slug, key: body.api_key.key, keyId: body.api_key.id }
}

/** inject() with a tenant's key. */
export function as (tenant: { key: string }, options: InjectOptions): InjectOptions {
  return { ...options, headers: { authorization: `Bearer ${tenant.key}`, ...options.headers } }
}
