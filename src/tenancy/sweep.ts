import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import type { FailureLog } from '../log-failure.ts'
import { endOperationClient, OperationLock, operationClient } from './operation-lock.ts'
import { DEFAULT_DDL, releaseShard, type DdlOptions } from './shards.ts'

/**
 * Removes the shards reserved for the lock's tenant by earlier operations that died: the caller
 * holds the tenant's operation lock, so none of them is in use. Returns the shards released.
 */
export async function releaseOwnReservations (
  lock: OperationLock, ddl: DdlOptions = DEFAULT_DDL, log?: FailureLog
): Promise<number[]> {
  const { rows } = await lock.client.query<{ shard: number }>(`
    SELECT r.shard FROM shard_reservations r
     WHERE r.subject_tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.shard = r.shard)
     ORDER BY r.shard`, [lock.tenantId])
  for (const { shard } of rows) await releaseShard(lock.client, shard, ddl, log)
  return rows.map((r) => r.shard)
}

export interface SweepResult {
  /** Tenants left `moving` by a move that died, set back to `active`. */
  tenantsReset: string[]
  /** Dedicated shards whose partitions no tenant lives in, removed. */
  shardsReleased: number[]
  /** Shards that could not be removed this time (busy tables, or an operation still running). */
  shardsLeft: number[]
}

/**
 * Recovery after a crash (or a failed release): sets tenants stuck in `moving` back to `active`
 * when no move is running for them, and removes the partitions of dedicated shards that belong to
 * no tenant — reserved by an operation that is no longer running, or not reserved at all — noting
 * it in the erasure receipt when the shard was an erased tenant's. Safe at any time and from any
 * instance: it skips whatever a live operation holds. `skipTenant`: an operation calling it while
 * holding that tenant's lock (its own shards are its business). `log`: where a failed cleanup step
 * (a connection that would not close) is reported.
 */
export async function sweepShards (
  pool: pg.Pool, options: { ddl?: DdlOptions, skipTenant?: string, log?: FailureLog } = {}
): Promise<SweepResult> {
  const log = options.log
  const result: SweepResult = { tenantsReset: [], shardsReleased: [], shardsLeft: [] }
  const { rows: moving } = await pool.query<{ id: string }>(
    "SELECT id FROM tenants WHERE status = 'moving' ORDER BY id")
  for (const { id } of moving) {
    if (id === options.skipTenant) continue
    const lock = await OperationLock.tryAcquire(pool, id, log)
    if (lock === undefined) continue
    try {
      if (await resetStuckMove(pool, id)) result.tenantsReset.push(id)
    } finally {
      await lock.release()
    }
  }
  for (const candidate of await unusedShards(pool)) {
    if (candidate.subject !== null && candidate.subject === options.skipTenant) continue
    // An unreserved shard was orphaned before reservations existed (or by hand): nobody's operation.
    const lock = candidate.subject === null ? undefined : await OperationLock.tryAcquire(pool, candidate.subject, log)
    if (candidate.subject !== null && lock === undefined) { result.shardsLeft.push(candidate.shard); continue }
    const client = lock?.client ?? operationClient(pool)
    try {
      if (lock === undefined) await client.connect()
      await releaseShard(client, candidate.shard, options.ddl, log)
      result.shardsReleased.push(candidate.shard)
    } catch {
      result.shardsLeft.push(candidate.shard) // reported in the result, for a later sweep
    } finally {
      if (lock !== undefined) await lock.release()
      else await endOperationClient(client, log, { shard: candidate.shard })
    }
  }
  return result
}

/** Dedicated shards with partitions or a reservation but no tenant, with the reservation's tenant if any. */
async function unusedShards (pool: pg.Pool): Promise<Array<{ shard: number, subject: string | null }>> {
  // The catalog first, then the registry and reservations: a shard whose partitions are seen here
  // was created by a transaction that has committed, so its tenant or reservation is seen below.
  const { rows: present } = await pool.query<{ shard: number }>(`
    WITH sharded AS (
      SELECT p.relname FROM pg_partitioned_table pt
        JOIN pg_class p ON p.oid = pt.partrelid JOIN pg_namespace n ON n.oid = p.relnamespace
        JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
       WHERE n.nspname = 'public' AND a.attname = 'shard' AND NOT p.relispartition
    )
    -- Attached, pending detach, or detached but not dropped yet: every table named <sharded>_s<n>.
    SELECT DISTINCT substring(c.relname FROM '_s([0-9]+)$')::integer AS shard
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN sharded s ON c.relname ~ ('^' || s.relname || '_s[0-9]+$')
     WHERE n.nspname = 'public' AND c.relkind = 'r'
     ORDER BY 1`)
  const shards = present.map((p) => p.shard)
  const { rows: owners } = await pool.query<{ shard: number, tenant: boolean, subject: string | null }>(`
    SELECT s.shard, EXISTS (SELECT 1 FROM tenants t WHERE t.shard = s.shard) AS tenant,
           (SELECT r.subject_tenant_id::text FROM shard_reservations r WHERE r.shard = s.shard) AS subject
      FROM unnest($1::integer[]) AS s(shard)
     WHERE s.shard >= pooled_shards()`, [shards])
  const { rows: reservedOnly } = await pool.query<{ shard: number, subject: string }>(`
    SELECT shard, subject_tenant_id::text AS subject FROM shard_reservations
     WHERE NOT (shard = ANY ($1::integer[])) ORDER BY shard`, [shards])
  return [
    ...owners.filter((o) => !o.tenant).map((o) => ({ shard: o.shard, subject: o.subject })),
    ...reservedOnly.map((r) => ({ shard: r.shard, subject: r.subject })),
  ]
}

/** Sets a tenant left `moving` back to `active`; the caller holds its operation lock. */
async function resetStuckMove (pool: pg.Pool, tenantId: string): Promise<boolean> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    const reset = await db.updateTable('tenants').set({ status: 'active' })
      .where('id', '=', tenantId).where('status', '=', 'moving').executeTakeFirst()
    return Number(reset.numUpdatedRows) > 0
  })
}
