import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/**
 * Records when API keys were last used without a write per request: uses are remembered in memory
 * and written per flush (every KEY_USAGE_FLUSH_MS and at shutdown), each tenant's keys under that
 * tenant's own binding, in one UPDATE that leaves in the same write as BEGIN and the binding: two
 * round trips per tenant however many of its keys were used. Losing a few seconds of "last used" on
 * a crash is acceptable (so these commits do not wait for the WAL flush); adding a write to every
 * request is not.
 */
export class KeyUsageRecorder {
  readonly #pool: pg.Pool
  readonly #pending = new Map<string, { tenantId: string, at: Date }>()
  #timer: NodeJS.Timeout | undefined
  #flushing: Promise<void> = Promise.resolve()

  constructor (pool: pg.Pool, flushEveryMs: number, onError: (error: unknown) => void) {
    this.#pool = pool
    this.#timer = setInterval(() => { this.flush().catch(onError) }, flushEveryMs)
    this.#timer.unref()
  }

  record (tenantId: string, keyId: string): void {
    this.#pending.set(keyId, { tenantId, at: new Date() })
  }

  /** Writes what has been recorded so far; concurrent calls are serialised. */
  async flush (): Promise<void> {
    this.#flushing = this.#flushing.catch(() => {}).then(() => this.#write())
    return this.#flushing
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.flush()
  }

  async #write (): Promise<void> {
    if (this.#pending.size === 0) return
    const byTenant = new Map<string, Array<{ keyId: string, at: Date }>>()
    for (const [keyId, use] of this.#pending) {
      const list = byTenant.get(use.tenantId) ?? []
      list.push({ keyId, at: use.at })
      byTenant.set(use.tenantId, list)
    }
    this.#pending.clear()
    // One tenant's failure (its binding refused, a lost connection) does not keep the others' uses
    // from being written; the first error is reported once all were tried.
    let failure: unknown
    for (const [tenantId, uses] of byTenant) {
      // In key order: two workers flushing the same tenant's keys lock them in the same order.
      uses.sort((x, y) => (x.keyId < y.keyId ? -1 : 1)) // one entry per key
      await this.#writeTenant(tenantId, uses).catch((error: unknown) => { failure ??= error })
    }
    if (failure !== undefined) throw failure
  }

  async #writeTenant (tenantId: string, uses: Array<{ keyId: string, at: Date }>): Promise<void> {
    // Sent before the binding's answer (holdWrites: one write with BEGIN and the binding); RLS
    // limits the UPDATE to the bound tenant's keys, and a tenant gone since matches nothing.
    await withTenantTransaction(this.#pool, tenantId, async (trx) => await Promise.all([
      sql`SELECT set_config('synchronous_commit', 'off', true)`.execute(trx.db),
      sql`UPDATE api_keys SET last_used_at = greatest(api_keys.last_used_at, u.at)
            FROM unnest(${uses.map((u) => u.keyId)}::uuid[], ${uses.map((u) => u.at)}::timestamptz[]) AS u (id, at)
           WHERE api_keys.tenant_id = ${tenantId} AND api_keys.id = u.id`.execute(trx.db),
    ]), { holdWrites: true })
  }
}
