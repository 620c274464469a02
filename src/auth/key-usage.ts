import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/**
 * Records when API keys were last used without a write per request: uses are remembered in memory
 * and written in one transaction per flush (every KEY_USAGE_FLUSH_MS and at shutdown), each tenant's
 * keys under that tenant's own binding. Losing a few seconds of "last used" on a crash is acceptable;
 * adding a write to every request is not.
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
    for (const [tenantId, uses] of byTenant) {
      await withTenantTransaction(this.#pool, tenantId, async (trx) => {
        for (const use of uses) {
          await trx.db.updateTable('api_keys')
            .set({ last_used_at: sql<Date>`greatest(last_used_at, ${use.at})` })
            .where('tenant_id', '=', tenantId)
            .where('id', '=', use.keyId)
            .execute()
        }
      })
    }
  }
}
