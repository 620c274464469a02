import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** The most events one statement deletes: a long backlog goes in bounded steps, each its own transaction. */
export const RETENTION_BATCH = 5_000

/**
 * Deletes the events older than `retentionDays`, tenant by tenant, each step in a transaction bound
 * to that tenant (as requests bind theirs: the shared lock that erasure and moves wait for). Run as
 * the owner (`pool`: DATABASE_URL), so that the runtime role needs no DELETE on events; FORCE RLS
 * shows the owner only the bound tenant's rows. Called by the maintenance sweep for now (the job
 * queue of issue 15 will schedule it). Returns how many events were deleted.
 */
export async function deleteExpiredEvents (pool: pg.Pool, retentionDays: number): Promise<number> {
  // One probe per tenant: the index on (tenant_id, created_at, id) finds its expired events, if any.
  const { rows: tenants } = await pool.query<{ id: string }>(
    "SELECT id FROM tenants WHERE status = 'active' ORDER BY id")
  let deleted = 0
  for (const { id: tenantId } of tenants) {
    for (;;) {
      const n = await withTenantTransaction(pool, tenantId, async ({ db }) => {
        const result = await sql`
          DELETE FROM events e USING (
            SELECT tenant_id, id, shard FROM events
             WHERE tenant_id = ${tenantId} AND created_at < now() - make_interval(days => ${retentionDays})
             ORDER BY created_at LIMIT ${RETENTION_BATCH}) old
           WHERE e.tenant_id = ${tenantId} AND e.tenant_id = old.tenant_id AND e.id = old.id
             AND e.shard = old.shard`.execute(db)
        return Number(result.numAffectedRows ?? 0)
      })
      deleted += n
      if (n < RETENTION_BATCH) break
    }
  }
  return deleted
}
