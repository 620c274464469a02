import { sql, type Kysely } from 'kysely'
import type { Config } from '../config.ts'
import type { DB } from '../db/schema.ts'

/**
 * What a tenant may use. Rates and concurrency are enforced by each instance before a request gets a
 * database connection; quotas are enforced by the database in the write's own transaction (sql/0020).
 * A value of null is unlimited.
 */
export const RATE_LIMIT_NAMES = ['requests_per_second', 'burst', 'concurrent_requests'] as const
/** Counted per billing period (a UTC calendar month): they reset at the start of the next one. */
export const PERIOD_QUOTAS = ['invoices_created', 'events_delivered', 'export_bytes'] as const
/** Counted as the tenant's live objects: they go down when objects are deleted, never reset. */
export const OBJECT_QUOTAS = ['customers', 'api_keys', 'members', 'webhook_endpoints'] as const
export const QUOTA_NAMES = [...PERIOD_QUOTAS, ...OBJECT_QUOTAS] as const
export const LIMIT_NAMES = [...RATE_LIMIT_NAMES, ...QUOTA_NAMES] as const

export type RateLimitName = typeof RATE_LIMIT_NAMES[number]
export type QuotaName = typeof QUOTA_NAMES[number]
export type LimitName = typeof LIMIT_NAMES[number]

/** Every limit resolved: a number, or null for unlimited. */
export type Limits = { [K in LimitName]: number | null }
/** Some limits, as a plan or a tenant's overrides hold them: a name absent leaves it to the next layer. */
export type PartialLimits = Partial<Limits>

const ENV_NAME = {
  requests_per_second: 'LIMIT_REQUESTS_PER_SECOND',
  burst: 'LIMIT_BURST',
  concurrent_requests: 'LIMIT_CONCURRENT_REQUESTS',
  invoices_created: 'LIMIT_INVOICES_CREATED',
  customers: 'LIMIT_CUSTOMERS',
  api_keys: 'LIMIT_API_KEYS',
  members: 'LIMIT_MEMBERS',
  webhook_endpoints: 'LIMIT_WEBHOOK_ENDPOINTS',
  events_delivered: 'LIMIT_EVENTS_DELIVERED',
  export_bytes: 'LIMIT_EXPORT_BYTES',
} as const satisfies { [K in LimitName]: keyof Config }

/** The environment variable that sets a limit's default. */
export const limitEnvName = (name: LimitName): string => ENV_NAME[name]

/**
 * The configured defaults (LIMIT_* variables): what applies where neither the tenant's plan nor its
 * overrides name a limit. concurrent_requests defaults to TENANT_POOL_SHARE of the runtime pool.
 */
export type LimitsConfig = Pick<Config, typeof ENV_NAME[LimitName] | 'DB_POOL_MAX' | 'TENANT_POOL_SHARE'>

export function defaultLimits (config: LimitsConfig): Limits {
  const limits = {} as Limits
  for (const name of LIMIT_NAMES) {
    const value = config[ENV_NAME[name]] as number | 'unlimited' | undefined
    limits[name] = value === undefined || value === 'unlimited' ? null : value
  }
  if (config.LIMIT_CONCURRENT_REQUESTS === undefined) {
    limits.concurrent_requests = Math.max(1, Math.floor(config.DB_POOL_MAX * config.TENANT_POOL_SHARE))
  }
  return limits
}

/** The limits in force: the tenant's overrides, else its plan's, else the defaults. */
export function resolveLimits (defaults: Limits, plan: PartialLimits | null, overrides: PartialLimits | null): Limits {
  const limits = { ...defaults }
  for (const name of LIMIT_NAMES) {
    if (overrides !== null && name in overrides) limits[name] = overrides[name] ?? null
    else if (plan !== null && name in plan) limits[name] = plan[name] ?? null
  }
  return limits
}

/**
 * The defaults the database needs to judge quotas (sql/0020: tenant_limit), set transaction-locally
 * by each request's binding statement: the quota names only, as JSON.
 */
export function quotaDefaultsSetting (defaults: Limits): string {
  const quotas: Record<string, number | null> = {}
  for (const name of QUOTA_NAMES) quotas[name] = defaults[name]
  return JSON.stringify(quotas)
}

/**
 * For a transaction that does billable work outside a request (the job worker's): the default quotas,
 * so that the database's billing notices judge against them as a request's transaction would.
 */
export async function applyQuotaDefaults (db: Kysely<DB>, setting: string): Promise<void> {
  await sql`SELECT set_config('app.default_limits', ${setting}, true)`.execute(db)
}
