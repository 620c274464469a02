import { sql } from 'kysely'
import type pg from 'pg'
import { transient } from '../auth/key-usage.ts'
import { PeriodicFlush } from '../db/periodic-flush.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import type { TenantRefusalSink } from './refusals.ts'

/** How many tenants' counts are written at once: a slow tenant holds up one lane, not the flush. */
const PARALLEL_TENANTS = 4

class TenantFlushTimedOut extends Error {
  override name = 'TenantFlushTimedOut'
}

/** One tenant's counts of one UTC day, not written yet. */
interface Tally {
  tenantId: string
  day: string
  routes: Map<string, number>
  metrics: Map<string, number>
}

/**
 * Counts each tenant's requests (per route) and refusals in memory and writes them every `flushEveryMs`
 * and at shutdown, per tenant under its own binding, in one statement (sql/0020: usage_record_requests).
 * A write per request would double the cost of a read; what a crash can lose is bounded instead: the
 * counts since the last flush that committed, at most `flushEveryMs` of them (plus a flush that was
 * under way). Counts stay pending until their tenant's write commits, so a tenant that fails (its lock
 * held by an erasure, a lost connection) is retried by the next flush with nothing lost. (A connection lost
 * after the database committed a write but before it answered has its counts written again: such a
 * count may be doubled, never lost.)
 * Billable work is never counted here: the database counts it in the transaction that does it.
 */
export class UsageMeter {
  readonly #pool: pg.Pool
  /** How long one tenant's write may take before it is cancelled and left to the next flush. */
  readonly #tenantLimitMs: number
  #pending = new Map<string, Tally>()
  readonly #flusher: PeriodicFlush

  constructor (pool: pg.Pool, flushEveryMs: number, onError: (error: unknown) => void) {
    this.#pool = pool
    this.#tenantLimitMs = Math.max(100, Math.min(5000, flushEveryMs / 2))
    this.#flusher = new PeriodicFlush(async () => this.#write(), flushEveryMs, onError)
  }

  /** One of the tenant's requests, admitted and answered, on `route` ('GET /v1/invoices/:id'). */
  request (tenantId: string, route: string): void {
    const tally = this.#tally(tenantId)
    tally.routes.set(route, (tally.routes.get(route) ?? 0) + 1)
    tally.metrics.set('requests', (tally.metrics.get('requests') ?? 0) + 1)
  }

  /** A refusal of one of the tenant's requests (Refusals' sink). */
  readonly refusal: TenantRefusalSink = (tenantId, reason) => {
    const tally = this.#tally(tenantId)
    const metric = `refusals_${reason}`
    tally.metrics.set(metric, (tally.metrics.get(metric) ?? 0) + 1)
  }

  /** Tenant-days with counts not written yet. */
  get pending (): number {
    return this.#pending.size
  }

  #tally (tenantId: string): Tally {
    const day = new Date().toISOString().slice(0, 10)
    const key = `${tenantId}/${day}`
    let tally = this.#pending.get(key)
    if (tally === undefined) {
      tally = { tenantId, day, routes: new Map(), metrics: new Map() }
      this.#pending.set(key, tally)
    }
    return tally
  }

  /** Writes what has been counted so far; concurrent calls are serialised. */
  async flush (): Promise<void> { return this.#flusher.flush() }

  async close (): Promise<void> { return this.#flusher.close() }

  async #write (): Promise<void> {
    if (this.#pending.size === 0) return
    // Taken whole: counts made while this flush runs go to the next one.
    const batch = [...this.#pending.values()]
    this.#pending = new Map()
    let failure: unknown
    const lane = async (): Promise<void> => {
      for (let tally = batch.shift(); tally !== undefined; tally = batch.shift()) {
        try {
          await this.#writeTally(tally)
        } catch (error) {
          failure ??= error
          if (transient(error)) this.#merge(tally) // back in line for the next flush
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(PARALLEL_TENANTS, batch.length) }, lane))
    if (failure !== undefined) throw failure
  }

  #merge (failed: Tally): void {
    const tally = this.#pending.get(`${failed.tenantId}/${failed.day}`)
    if (tally === undefined) {
      this.#pending.set(`${failed.tenantId}/${failed.day}`, failed)
      return
    }
    for (const [route, n] of failed.routes) tally.routes.set(route, (tally.routes.get(route) ?? 0) + n)
    for (const [metric, n] of failed.metrics) tally.metrics.set(metric, (tally.metrics.get(metric) ?? 0) + n)
  }

  async #writeTally (tally: Tally): Promise<void> {
    const routes = [...tally.routes]
    const metrics = [...tally.metrics]
    // Sent with BEGIN and the binding (holdWrites); a tenant erased since matches nothing and fails the
    // binding's foreign keys: not transient, so its counts are dropped with it.
    await withTenantTransaction(this.#pool, tally.tenantId, async (trx) => {
      // A tenant whose lock is held (a placement move, an erasure) waits for the next flush; the others
      // are written meanwhile, so a crash then loses no more of theirs than one interval.
      const limit = setTimeout(() => {
        trx.abort(new TenantFlushTimedOut(`writing request counts of tenant ${tally.tenantId} took over ` +
          `${this.#tenantLimitMs} ms`))
      }, this.#tenantLimitMs)
      try {
        // Losing a flush to a crash is already accepted: no need to wait for the WAL flush.
        await Promise.all([
          sql`SELECT set_config('synchronous_commit', 'off', true)`.execute(trx.db),
          sql`SELECT usage_record_requests(${tally.day}::date, ${routes.map((r) => r[0])}::text[],
              ${routes.map((r) => r[1])}::bigint[], ${metrics.map((m) => m[0])}::text[],
              ${metrics.map((m) => m[1])}::bigint[])`.execute(trx.db),
        ])
      } finally {
        clearTimeout(limit)
      }
    }, { holdWrites: true })
  }
}
