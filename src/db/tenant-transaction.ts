import { sql, type ControlledTransaction } from 'kysely'
import type { Database } from './database.ts'
import type { DB } from './schema.ts'

/** A transaction bound to one tenant: every statement in it sees that tenant's rows only. */
export type TenantTransaction = ControlledTransaction<DB>

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * Checks a connection out of the pool, opens a transaction and binds the tenant with
 * `set_config(..., true)`: transaction-local, so the binding ends with COMMIT or ROLLBACK and a
 * pooled connection can never carry a tenant into the next request.
 */
export async function beginTenantTransaction (db: Database, tenantId: string): Promise<TenantTransaction> {
  if (!UUID.test(tenantId)) throw new TypeError('tenant id must be a UUID')
  const trx = await db.startTransaction().execute()
  try {
    await sql`SELECT set_config('app.current_tenant_id', ${tenantId}, true)`.execute(trx)
  } catch (error) {
    await trx.rollback().execute().catch(() => {})
    throw error
  }
  return trx
}

/**
 * Ends a tenant transaction. A failed COMMIT is rethrown (the caller must not report success)
 * after the connection has been rolled back and released; a ROLLBACK never throws.
 */
export async function endTenantTransaction (trx: TenantTransaction, commit: boolean): Promise<void> {
  if (trx.isCommitted || trx.isRolledBack) return
  if (!commit) {
    await trx.rollback().execute().catch(() => {})
    return
  }
  try {
    await trx.commit().execute()
  } catch (error) {
    // COMMIT failed (e.g. the connection died): make sure the connection goes back to the pool.
    await trx.rollback().execute().catch(() => {})
    throw error
  }
}

/** Runs `work` in a tenant transaction: commit when it resolves, roll back when it throws. */
export async function withTenantTransaction<T> (db: Database, tenantId: string, work: (trx: TenantTransaction) => Promise<T>): Promise<T> {
  const trx = await beginTenantTransaction(db, tenantId)
  let result: T
  try {
    result = await work(trx)
  } catch (error) {
    await endTenantTransaction(trx, false)
    throw error
  }
  await endTenantTransaction(trx, true)
  return result
}
