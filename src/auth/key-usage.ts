import { sql } from 'kysely'
import type pg from 'pg'
import { PeriodicFlush } from '../db/periodic-flush.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** How many tenants' uses are written at once: a slow tenant holds up one lane, not the flush. */
const PARALLEL_TENANTS = 4

class TenantFlushTimedOut extends Error {
  override name = 'TenantFlushTimedOut'
}

/**
 * Worth retrying with the next flush: a time limit, a lost connection, a lock, a conflict or a
 * server going down. Anything else (an id that is not a UUID, a value the database refuses) would
 * fail the same way every time, so those uses are dropped rather than kept forever.
 */
export function transient (error: unknown): boolean {
  if (error instanceof TypeError) return false
  const code = (error as { code?: unknown }).code
  return typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code) || /^(08|40|53|55|57)/.test(code)
}

/**
 * Records when API keys were last used without a write per request: uses are remembered in memory
 * and written per flush (every KEY_USAGE_FLUSH_MS and at shutdown), each tenant's keys under that
 * tenant's own binding, in one UPDATE that leaves in the same write as BEGIN and the binding: two
 * round trips per tenant however many of its keys were used. Losing a few seconds of "last used" on
 * a crash is acceptable (so these commits do not wait for the WAL flush); adding a write to every
 * request is not.
 *
 * A use stays pending until its tenant's write has committed, so a tenant that fails (its lock held
 * by an erasure or a move, a lost connection) is retried by the next flush with nothing lost. Tenants
 * are written a few at a time, each within a time limit, so one of them cannot hold up the others.
 */
export class KeyUsageRecorder {
  readonly #pool: pg.Pool
  readonly #pending = new Map<string, { tenantId: string, at: Date }>()
  readonly #tenantLimitMs: number
  readonly #flusher: PeriodicFlush

  constructor (pool: pg.Pool, flushEveryMs: number, onError: (error: unknown) => void) {
    this.#pool = pool
    this.#tenantLimitMs = Math.max(100, Math.min(5000, flushEveryMs / 2))
    this.#flusher = new PeriodicFlush(async () => this.#write(), flushEveryMs, onError)
  }

  /** Call once the key has been confirmed by the database and allowed to act (scope, tenant). */
  record (tenantId: string, keyId: string): void {
    this.#pending.set(keyId, { tenantId, at: new Date() })
  }

  /** Keys with a use not written yet. */
  get pendingKeys (): number {
    return this.#pending.size
  }

  /** Writes what has been recorded so far; concurrent calls are serialised. */
  async flush (): Promise<void> { return this.#flusher.flush() }

  async close (): Promise<void> { return this.#flusher.close() }

  async #write (): Promise<void> {
    if (this.#pending.size === 0) return
    const byTenant = new Map<string, Array<{ keyId: string, at: Date }>>()
    for (const [keyId, use] of this.#pending) {
      const list = byTenant.get(use.tenantId) ?? []
      list.push({ keyId, at: use.at })
      byTenant.set(use.tenantId, list)
    }
    const queue = [...byTenant]
    // One tenant's failure does not keep the others' uses from being written; the first error is
    // reported once all were tried.
    let failure: unknown
    const lane = async (): Promise<void> => {
      for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
        const [tenantId, uses] = next
        // In key order: two workers flushing the same tenant's keys lock them in the same order.
        uses.sort((x, y) => (x.keyId < y.keyId ? -1 : 1)) // one entry per key
        try {
          await this.#writeTenant(tenantId, uses)
        } catch (error) {
          failure ??= error
          if (transient(error)) continue
        }
        // Written (or never writable): forget these uses, unless a later use came in meanwhile.
        for (const use of uses) if (this.#pending.get(use.keyId)?.at === use.at) this.#pending.delete(use.keyId)
      }
    }
    await Promise.all(Array.from({ length: Math.min(PARALLEL_TENANTS, queue.length) }, lane))
    if (failure !== undefined) throw failure
  }

  async #writeTenant (tenantId: string, uses: Array<{ keyId: string, at: Date }>): Promise<void> {
    // Sent before the binding's answer (holdWrites: one write with BEGIN and the binding); RLS
    // limits the UPDATE to the bound tenant's keys, and a tenant gone since matches nothing.
    await withTenantTransaction(this.#pool, tenantId, async (trx) => {
      // Past the limit the waiting statement (e.g. the binding, behind an erasure's lock) is cancelled.
      const limit = setTimeout(() => {
        const limitMs = this.#tenantLimitMs
        trx.abort(new TenantFlushTimedOut(`writing key usage of tenant ${tenantId} took over ${limitMs} ms`))
      }, this.#tenantLimitMs)
      try {
        await Promise.all([
          sql`SELECT set_config('synchronous_commit', 'off', true)`.execute(trx.db),
          sql`UPDATE api_keys SET last_used_at = greatest(api_keys.last_used_at, u.at)
                FROM unnest(${uses.map((u) => u.keyId)}::uuid[], ${uses.map((u) => u.at)}::timestamptz[]) AS u (id, at)
               WHERE api_keys.tenant_id = ${tenantId} AND api_keys.id = u.id`.execute(trx.db),
        ])
      } finally {
        clearTimeout(limit)
      }
    }, { holdWrites: true })
  }
}
