import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { logFailure, type FailureLog } from '../log-failure.ts'
import { withOperationLock } from './operation-lock.ts'
import { DEFAULT_DDL, releaseShard, reserveForRelease, type DdlOptions, type Placement } from './shards.ts'
import { releaseOwnReservations, sweepShards } from './sweep.ts'
import { ident, tenantTablesInOrder } from './tenant-tables.ts'
import { TENANT_LOCK_SALT, withTenantTransaction } from '../db/tenant-transaction.ts'

/**
 * Erasure (the right to be forgotten), under the tenant's operation lock (no placement move runs
 * alongside), in three steps:
 * 1. revoke: mark the tenant `erasing` and revoke its API keys, committed at once, so its next request
 *    is a 401 (users' requests a 403) on every server instance;
 * 2. remove, in one transaction: wait (bounded) for the tenant's in-flight requests, which hold its
 *    lock in shared mode, delete its rows children first with row locks only, verify from the
 *    catalog that no table holds a row of it, then delete the tenants row, keep the receipt in
 *    erasure_receipts and reserve a dedicated shard for release — or, if rows are left, roll all of
 *    it back and report the tables (ErasureIncomplete): the tenant stays `erasing` and revoked, and
 *    running the erasure again does the whole of step 2 again;
 * 3. dedicated tenants: remove the emptied partitions (DETACH CONCURRENTLY, then DROP: see
 *    releaseShard). If that fails, the receipt says partitions_dropped: false and the shard stays
 *    reserved; the next sweep (the next erasure, or POST /admin/v1/maintenance/sweep) removes the
 *    partitions and sets partitions_dropped on the receipt.
 */
export interface ErasureReceipt {
  id: string
  tenant_id: string
  slug: string
  placement: Placement
  requested_by: string
  request_id: string | null
  started_at: string
  finished_at: string
  rows_removed: Record<string, number>
  /** Dedicated tenants: whether their (empty) partitions were dropped; if not, the next sweep drops them. */
  partitions_dropped: boolean
  verified: boolean
}

/** Rows of the tenant were left after the deletes: nothing was committed but the revocation. */
export class ErasureIncomplete extends Error {
  override name = 'ErasureIncomplete'
  constructor (readonly rowsLeft: Record<string, number>) {
    super(`rows of the tenant are left in ${Object.keys(rowsLeft).join(', ')}`)
  }
}

/** A tenant-bound transaction on a raw owner connection (see withTenantTransaction). */
async function inTenantTransaction<T> (
  pool: pg.Pool, tenantId: string, work: (client: pg.PoolClient) => Promise<T>
): Promise<T> {
  return withTenantTransaction(pool, tenantId, async (trx) => work(trx.client))
}

/**
 * Rows of the tenant in any table of any schema that has a tenant_id column, from the catalog —
 * wider than what the erasure deletes (public's tenant tables), so a table it does not know of is
 * reported rather than silently kept. The tenants registry is not counted.
 */
async function rowsLeft (client: pg.ClientBase, tenantId: string): Promise<Record<string, number>> {
  const { rows: tables } = await client.query<{ name: string, shown: string }>(`
    SELECT c.oid::regclass::text AS name,
           CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END AS shown
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
       AND EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped)
     ORDER BY 2`)
  const left: Record<string, number> = {}
  for (const t of tables) {
    const { rows: [r] } = await client.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${t.name} WHERE tenant_id = $1`, [tenantId])
    if (Number(r!.n) > 0) left[t.shown] = Number(r!.n)
  }
  return left
}

export interface EraseOptions {
  requestedBy: string
  requestId?: string
  /** How long to wait for the tenant's in-flight requests to finish. */
  lockTimeoutMs?: number
  /** After revoking: time for every instance's credential cache to drop the tenant. */
  graceMs?: number
  ddl?: DdlOptions
  /** Warnings: partitions left for the next sweep. */
  log?: FailureLog
}

/**
 * Returns the receipt, or undefined when there is no such tenant. Throws PlacementBusy while a move
 * holds the tenant, ErasureIncomplete when rows would be left.
 */
export async function eraseTenant (
  pool: pg.Pool, tenantId: string, options: EraseOptions
): Promise<ErasureReceipt | undefined> {
  const ddl = options.ddl ?? DEFAULT_DDL
  const receipt = await withOperationLock(pool, tenantId, async (lock) => {
    const startedAt = new Date()
    const tenant = await inTenantTransaction(pool, tenantId, async (client) => {
      const { rows: [row] } = await client.query<{ slug: string, placement: Placement, shard: number }>(
        "UPDATE tenants SET status = 'erasing' WHERE id = $1 RETURNING slug, placement, shard", [tenantId])
      if (row === undefined) return undefined
      await client.query(
        'UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL', [tenantId])
      return row
    })
    if (tenant === undefined) return undefined
    await new Promise((resolve) => setTimeout(resolve, options.graceMs ?? 0))

    const receipt = await inTenantTransaction(pool, tenantId, async (client) => {
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(options.lockTimeoutMs ?? 30_000))}`)
      await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))', [tenantId, TENANT_LOCK_SALT])
      const tables = (await tenantTablesInOrder(client)).reverse() // children first, tenants last
      const rows: Record<string, number> = {}
      // Row deletes only: no DDL here, so other tenants' requests never queue behind the erasure.
      // The scoping predicates prune to the tenant's partition (dedicated) or pooled shard.
      for (const t of tables) {
        if (t.name === 'tenants') continue
        const shardPredicate = t.sharded ? ' AND shard = $2' : ''
        const values = t.sharded ? [tenantId, tenant.shard] : [tenantId]
        const result = await client.query(
          `DELETE FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1${shardPredicate}`, values)
        rows[t.name] = result.rowCount ?? 0
      }
      // Its queued jobs (webhook deliveries, exports): they carry only references, but a job left
      // behind would name a tenant that is gone. One running now binds the tenant after us and ends.
      const jobs = await client.query(
        "DELETE FROM graphile_worker._private_jobs WHERE payload->>'tenant_id' = $1", [tenantId])
      rows.jobs = jobs.rowCount ?? 0
      const left = await rowsLeft(client, tenantId)
      if (Object.keys(left).length > 0) throw new ErasureIncomplete(left) // rolls the deletes back
      const deleted = await client.query('DELETE FROM tenants WHERE id = $1', [tenantId])
      rows.tenants = deleted.rowCount ?? 0
      const dedicated = tenant.placement === 'dedicated'
      if (dedicated) await reserveForRelease(client, tenant.shard, tenantId, 'erasure')
      const receipt: ErasureReceipt = {
        id: randomUUID(),
        tenant_id: tenantId,
        slug: tenant.slug,
        placement: tenant.placement,
        requested_by: options.requestedBy,
        request_id: options.requestId ?? null,
        started_at: startedAt.toISOString(),
        finished_at: new Date().toISOString(),
        rows_removed: rows,
        partitions_dropped: !dedicated,
        verified: true,
      }
      // In the transaction that removes the tenant: a receipt exists exactly when the tenant is gone.
      await client.query(`INSERT INTO erasure_receipts (id, subject_tenant_id, subject_slug, placement, requested_by,
                          request_id, started_at, finished_at, rows_removed, partitions_dropped, verified, shard)
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
      [receipt.id, tenantId, receipt.slug, receipt.placement, receipt.requested_by, receipt.request_id,
        receipt.started_at, receipt.finished_at, JSON.stringify(receipt.rows_removed), receipt.partitions_dropped,
        receipt.verified, dedicated ? tenant.shard : null])
      return receipt
    })

    if (tenant.placement === 'dedicated') {
      // The partitions are empty and belong to no tenant now: DETACH CONCURRENTLY, then DROP.
      const left = (error: unknown): boolean => {
        options.log?.warn({ tenantId, shard: tenant.shard, err: error },
          'the partitions of an erased tenant are left for the next sweep')
        return false
      }
      receipt.partitions_dropped = await releaseShard(lock.client, tenant.shard, ddl, options.log)
        .then(() => true, left)
    }
    // Best effort: the erasure is complete; what is left is the next sweep's.
    await releaseOwnReservations(lock, ddl, options.log)
      .catch(logFailure(options.log, 'releasing the leftovers of earlier operations', { tenantId }))
    return receipt
  }, options.log)
  if (receipt !== undefined) {
    // Whatever earlier operations left behind (a crash, a release that gave up): the retry path.
    const swept = await sweepShards(pool, { ddl, log: options.log }).catch((error: unknown) => {
      options.log?.warn({ err: error }, 'the sweep after an erasure failed')
      return undefined
    })
    if (swept !== undefined && (swept.shardsReleased.length > 0 || swept.tenantsReset.length > 0)) {
      options.log?.warn({ ...swept }, 'the sweep after an erasure recovered earlier leftovers')
    }
  }
  return receipt
}
