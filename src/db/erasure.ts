import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { dropShardPartitions, type Placement } from './placement.ts'
import { tenantTablesInOrder } from './tenant-data.ts'
import { TENANT_LOCK_SALT, withTenantTransaction } from './tenant-transaction.ts'

/**
 * Erasure (the right to be forgotten), in three steps:
 * 1. revoke: mark the tenant `erasing` and revoke its API keys, committed at once, so its next request
 *    is a 401 (users' requests a 403) on every server instance;
 * 2. remove: wait (bounded) for the tenant's in-flight requests, which hold its lock in shared mode,
 *    then delete its rows, children before parents, the tenants row last — one transaction; a
 *    dedicated tenant's emptied partitions are then dropped;
 * 3. verify, from the catalog, that no tenant table holds a row of the tenant, and keep a receipt
 *    (rows per table, times, operator) in erasure_receipts, outside the tenant's data.
 * If step 2 fails the tenant stays revoked and `erasing`; running the erasure again resumes it.
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
  /** Dedicated tenants: whether their (empty) partitions were dropped; if not, an operator can retry. */
  partitions_dropped: boolean
  verified: boolean
}

const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`

/** A tenant-bound transaction on a raw owner connection (see withTenantTransaction). */
async function inTenantTransaction<T> (pool: pg.Pool, tenantId: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  return withTenantTransaction(pool, tenantId, async (trx) => work(trx.client))
}

/** Rows of the tenant left in any tenant table (the tenants registry included). */
export async function remainingRows (pool: pg.Pool, tenantId: string): Promise<Record<string, number>> {
  return inTenantTransaction(pool, tenantId, async (client) => {
    const left: Record<string, number> = {}
    for (const t of await tenantTablesInOrder(client)) {
      const { rows: [r] } = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1`, [tenantId])
      if (Number(r!.n) > 0) left[t.name] = Number(r!.n)
    }
    return left
  })
}

export interface EraseOptions {
  requestedBy: string
  requestId?: string
  /** How long to wait for the tenant's in-flight requests to finish. */
  lockTimeoutMs?: number
  /** After revoking: time for every instance's credential cache to drop the tenant. */
  graceMs?: number
}

/** Returns the receipt, or undefined when there is no such tenant. */
export async function eraseTenant (pool: pg.Pool, tenantId: string, options: EraseOptions): Promise<ErasureReceipt | undefined> {
  const startedAt = new Date()
  const tenant = await inTenantTransaction(pool, tenantId, async (client) => {
    const { rows: [row] } = await client.query<{ slug: string, placement: Placement, shard: number }>(
      "UPDATE tenants SET status = 'erasing' WHERE id = $1 RETURNING slug, placement, shard", [tenantId])
    if (row === undefined) return undefined
    await client.query('UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL', [tenantId])
    return row
  })
  if (tenant === undefined) return undefined
  await new Promise((resolve) => setTimeout(resolve, options.graceMs ?? 0))

  const removed = await inTenantTransaction(pool, tenantId, async (client) => {
    await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(options.lockTimeoutMs ?? 30_000))}`)
    await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))', [tenantId, TENANT_LOCK_SALT])
    const tables = (await tenantTablesInOrder(client)).reverse() // children first, tenants last
    const rows: Record<string, number> = {}
    // Row deletes only: no DDL here, so other tenants' requests never queue behind the erasure.
    // The scoping predicates prune to the tenant's partition (dedicated) or pooled shard.
    for (const t of tables) {
      const shardPredicate = t.sharded ? ' AND shard = $2' : ''
      const values = t.sharded ? [tenantId, tenant.shard] : [tenantId]
      const result = await client.query(`DELETE FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1${shardPredicate}`, values)
      rows[t.name] = result.rowCount ?? 0
    }
    return rows
  })

  // A dedicated tenant's partitions are now empty: drop them in short transactions of their own, each
  // giving up quickly rather than holding other tenants' queries behind its lock for long.
  let partitionsDropped = tenant.placement !== 'dedicated'
  for (let attempt = 1; !partitionsDropped && attempt <= 5; attempt++) {
    partitionsDropped = await inTenantTransaction(pool, tenantId, async (client) => {
      await client.query("SET LOCAL lock_timeout = '500ms'")
      await dropShardPartitions(client, tenant.shard)
      return true
    }).catch(async () => {
      await new Promise((resolve) => setTimeout(resolve, 100 * attempt))
      return false
    })
  }

  const left = await remainingRows(pool, tenantId)
  const receipt: ErasureReceipt = {
    id: randomUUID(),
    tenant_id: tenantId,
    slug: tenant.slug,
    placement: tenant.placement,
    requested_by: options.requestedBy,
    request_id: options.requestId ?? null,
    started_at: startedAt.toISOString(),
    finished_at: new Date().toISOString(),
    rows_removed: removed,
    partitions_dropped: partitionsDropped,
    verified: Object.keys(left).length === 0,
  }
  await pool.query(`INSERT INTO erasure_receipts (id, subject_tenant_id, subject_slug, placement, requested_by, request_id,
                    started_at, finished_at, rows_removed, partitions_dropped, verified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
  [receipt.id, tenantId, receipt.slug, receipt.placement, receipt.requested_by, receipt.request_id, receipt.started_at,
    receipt.finished_at, JSON.stringify(receipt.rows_removed), receipt.partitions_dropped, receipt.verified])
  if (!receipt.verified) throw new Error(`erasure of ${tenantId} left rows behind: ${JSON.stringify(left)}`)
  return receipt
}
