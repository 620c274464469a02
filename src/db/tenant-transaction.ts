import { sql, type ControlledTransaction } from 'kysely'
import type { Database } from './database.ts'
import type { DB } from './schema.ts'

/** A transaction bound to one tenant: every statement in it sees that tenant's rows only. */
export type TenantTransaction = ControlledTransaction<DB>

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Salt of the per-tenant advisory lock (see placement.ts: tenantLockKey). */
export const TENANT_LOCK_SALT = 7301

/**
 * Checks a connection out of the pool, opens a transaction and binds the tenant with
 * `set_config(..., true)`: transaction-local, so the binding ends with COMMIT or ROLLBACK and a
 * pooled connection can never carry a tenant into the next request.
 *
 * The same statement takes the tenant's lock in shared mode until the transaction ends: placement
 * moves and erasure take it exclusively. It must come before any read of the tenant's placement,
 * because a statement's snapshot is taken before it waits for a lock.
 */
export async function beginTenantTransaction (db: Database, tenantId: string): Promise<TenantTransaction> {
  if (!UUID.test(tenantId)) throw new TypeError('tenant id must be a UUID')
  const trx = await db.startTransaction().execute()
  try {
    await sql`SELECT set_config('app.current_tenant_id', ${tenantId}, true),
                     pg_advisory_xact_lock_shared(hashtextextended(${tenantId}::text, ${TENANT_LOCK_SALT}))`.execute(trx)
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
