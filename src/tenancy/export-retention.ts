import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/**
 * Deletes the tenants' own exports past expires_at (their chunks go with them: ON DELETE CASCADE),
 * tenant by tenant, each in a transaction bound to that tenant, as deleteExpiredEvents does
 * (./event-retention.ts): run as the owner (`pool`: DATABASE_URL), so that the runtime role needs no
 * DELETE on tenant_exports. Ready exports expire TENANT_EXPORT_TTL_MS after they finished; one that
 * never finished, that long after it was requested. Returns how many exports were deleted.
 */
export async function deleteExpiredExports (pool: pg.Pool): Promise<number> {
  const { rows: tenants } = await pool.query<{ id: string }>(
    "SELECT id FROM tenants WHERE status = 'active' ORDER BY id")
  let deleted = 0
  for (const { id: tenantId } of tenants) {
    deleted += await withTenantTransaction(pool, tenantId, async ({ db }) => {
      const result = await db.deleteFrom('tenant_exports')
        .where('tenant_id', '=', tenantId).where('expires_at', '<', sql<Date>`now()`).executeTakeFirst()
      return Number(result.numDeletedRows)
    })
  }
  return deleted
}
