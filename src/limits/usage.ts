import { sql, type Kysely } from 'kysely'
import type pg from 'pg'
import QueryStream from 'pg-query-stream'
import type { DB } from '../db/schema.ts'
import { quotaExceeded } from '../errors.ts'
import { OBJECT_QUOTAS, PERIOD_QUOTAS } from './limits.ts'

/** Counters of a period that are no quota: counted for billing and for the tenant's own view. */
export const PERIOD_COUNTERS = ['invoices_finalized', 'requests', 'refusals_rate', 'refusals_concurrency',
  'refusals_quota'] as const
/** The columns of the billing export, in order. */
export const BILLED_COUNTERS = [...PERIOD_QUOTAS, ...PERIOD_COUNTERS] as const

/** A billing period, 'YYYY-MM', as the date of its first day (UTC). */
export function periodStart (period: string): Date {
  return new Date(`${period}-01T00:00:00.000Z`)
}

export function periodEnd (period: string): Date {
  const start = periodStart(period)
  return new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1))
}

export const currentPeriod = (now = new Date()): string => now.toISOString().slice(0, 7)

export interface UsageCounter {
  name: string
  used: number
  limit: number | null
  resets_at: string | null
}

export interface UsageReport {
  period: string
  starts_at: string
  ends_at: string
  counters: UsageCounter[]
  days: Array<{ day: string, counters: Record<string, number> }>
}

/**
 * The bound tenant's usage in `period`, in the request's transaction. The current period also shows
 * each quota's limit (read by the database as it judges writes: tenant_limit) and the live objects
 * counted against the object quotas; a past period shows what was counted then (its limits were not
 * kept, so none are shown).
 */
export async function readUsage (
  db: Kysely<DB>, tenantId: string, period: string, now = new Date()
): Promise<UsageReport> {
  const start = periodStart(period)
  const end = periodEnd(period)
  const current = period === currentPeriod(now)
  const { rows: totals } = await sql<{ metric: string, amount: string }>`
    SELECT metric, amount::text FROM usage_periods WHERE tenant_id = ${tenantId} AND period = ${period + '-01'}::date`
    .execute(db)
  const used = new Map(totals.map((r) => [r.metric, Number(r.amount)]))
  const counters: UsageCounter[] = []
  const names: string[] = [...PERIOD_QUOTAS, ...PERIOD_COUNTERS]
  let limits = new Map<string, number | null>()
  if (current) {
    const quotas = [...PERIOD_QUOTAS, ...OBJECT_QUOTAS]
    const { rows } = await sql<{ name: string, limit: string | null }>`
      SELECT q.name, tenant_limit(${tenantId}::uuid, q.name)::text AS limit FROM unnest(${quotas}::text[]) AS q (name)`
      .execute(db)
    limits = new Map(rows.map((r) => [r.name, r.limit === null ? null : Number(r.limit)]))
    type Objects = Record<typeof OBJECT_QUOTAS[number], string>
    const { rows: objects } = await sql<Objects>`
      SELECT (SELECT count(*) FROM customers WHERE tenant_id = ${tenantId})::text AS customers,
             (SELECT count(*) FROM api_keys WHERE tenant_id = ${tenantId} AND revoked_at IS NULL)::text AS api_keys,
             (SELECT count(*) FROM memberships WHERE tenant_id = ${tenantId})::text AS members,
             (SELECT count(*) FROM webhook_endpoints WHERE tenant_id = ${tenantId})::text AS webhook_endpoints`
      .execute(db)
    for (const name of OBJECT_QUOTAS) used.set(name, Number(objects[0]![name]))
    names.push(...OBJECT_QUOTAS)
  }
  for (const name of names) {
    const isObject = (OBJECT_QUOTAS as readonly string[]).includes(name)
    counters.push({
      name,
      used: used.get(name) ?? 0,
      limit: limits.get(name) ?? null,
      resets_at: isObject ? null : end.toISOString(),
    })
  }
  const { rows: dayRows } = await sql<{ day: string, metric: string, amount: string }>`
    SELECT to_char(day, 'YYYY-MM-DD') AS day, metric, amount::text FROM usage_days
     WHERE tenant_id = ${tenantId} AND day >= ${start.toISOString().slice(0, 10)}::date
       AND day < ${end.toISOString().slice(0, 10)}::date
     ORDER BY day, metric`.execute(db)
  const days: UsageReport['days'] = []
  for (const row of dayRows) {
    if (days.at(-1)?.day !== row.day) days.push({ day: row.day, counters: {} })
    days.at(-1)!.counters[row.metric] = Number(row.amount)
  }
  return { period, starts_at: start.toISOString(), ends_at: end.toISOString(), counters, days }
}

export interface BilledTenant {
  tenant_id: string
  slug: string
  status: string
  totals: Record<string, string>
}

/**
 * Every tenant's totals for `period`, one row per tenant in id order, read through a cursor as the
 * owner (sql/0020's operator_billing policy): memory stays flat however many tenants there are.
 */
export async function * billingRows (pool: pg.Pool, period: string): AsyncGenerator<BilledTenant> {
  const client = await pool.connect()
  let done = false
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    const stream = client.query(new QueryStream(`
      SELECT t.id AS tenant_id, t.slug, t.status,
             coalesce(jsonb_object_agg(u.metric, u.amount::text) FILTER (WHERE u.metric IS NOT NULL), '{}') AS totals
        FROM tenants t LEFT JOIN usage_periods u ON u.tenant_id = t.id AND u.period = $1::date
       GROUP BY t.id ORDER BY t.id`, [`${period}-01`], { batchSize: 500 }))
    for await (const row of stream as AsyncIterable<BilledTenant>) yield row
    await client.query('COMMIT')
    done = true
  } finally {
    // A consumer that stopped reading (a client gone mid-download) leaves a cursor open: not reused.
    client.release(done ? undefined : true)
  }
}

const csvField = (value: string): string => (/[",\n\r]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value)

/** The billing export as CSV: a header line, then one line per tenant with a column per counter. */
export async function * billingCsv (rows: AsyncIterable<BilledTenant>, period: string): AsyncGenerator<string> {
  yield ['tenant_id', 'slug', 'status', 'period', ...BILLED_COUNTERS].join(',') + '\n'
  for await (const row of rows) {
    const counters = BILLED_COUNTERS.map((name) => row.totals[name] ?? '0')
    yield [row.tenant_id, csvField(row.slug), row.status, period, ...counters].join(',') + '\n'
  }
}

/** The billing export as NDJSON: one object per tenant, every counter present (0 when unused). */
export async function * billingNdjson (rows: AsyncIterable<BilledTenant>, period: string): AsyncGenerator<string> {
  for await (const row of rows) {
    const totals: Record<string, number> = {}
    for (const name of BILLED_COUNTERS) totals[name] = Number(row.totals[name] ?? 0)
    yield JSON.stringify({ tenant_id: row.tenant_id, slug: row.slug, status: row.status, period, totals }) + '\n'
  }
}

export interface RefusedTenant {
  tenant_id: string
  slug: string | null
  refusals: number
  rate: number
  concurrency: number
  quota: number
}

/** The tenants refused most often in `period` (as the owner: operator_billing), most refused first. */
export async function refusalRanking (db: Kysely<DB>, period: string, limit: number): Promise<RefusedTenant[]> {
  const { rows } = await sql<Record<keyof RefusedTenant, string>>`
    SELECT u.tenant_id, t.slug,
           sum(u.amount)::text AS refusals,
           coalesce(sum(u.amount) FILTER (WHERE u.metric = 'refusals_rate'), 0)::text AS rate,
           coalesce(sum(u.amount) FILTER (WHERE u.metric = 'refusals_concurrency'), 0)::text AS concurrency,
           coalesce(sum(u.amount) FILTER (WHERE u.metric = 'refusals_quota'), 0)::text AS quota
      FROM usage_periods u LEFT JOIN tenants t ON t.id = u.tenant_id
     WHERE u.period = ${period + '-01'}::date
       AND u.metric IN ('refusals_rate', 'refusals_concurrency', 'refusals_quota')
     GROUP BY u.tenant_id, t.slug
     ORDER BY sum(u.amount) DESC, u.tenant_id
     LIMIT ${limit}`.execute(db)
  return rows.map((r) => ({
    tenant_id: r.tenant_id,
    slug: r.slug,
    refusals: Number(r.refusals),
    rate: Number(r.rate),
    concurrency: Number(r.concurrency),
    quota: Number(r.quota),
  }))
}

/**
 * A period quota the tenant has used up, judged before work whose size is only known once it is done (an
 * export): the work is refused when nothing is left, and allowed to finish (and be counted) otherwise.
 */
export async function assertPeriodQuotaLeft (db: Kysely<DB>, tenantId: string, quota: 'export_bytes'): Promise<void> {
  const { rows } = await sql<{ limit: string | null, used: string | null, resets_at: Date | null }>`
    SELECT tenant_limit(${tenantId}::uuid, ${quota})::text AS limit, usage_resets_at(${quota}) AS resets_at,
           (SELECT amount FROM usage_periods WHERE tenant_id = ${tenantId} AND period = usage_period()
               AND metric = ${quota})::text AS used`.execute(db)
  const row = rows[0]!
  if (row.limit === null) return
  const limit = Number(row.limit)
  const used = Number(row.used ?? 0)
  if (used < limit) return
  const resetsAt = row.resets_at === null ? null : new Date(row.resets_at).toISOString()
  throw quotaExceeded({ quota, limit, used, resets_at: resetsAt })
}
