import { setTimeout as sleep } from 'node:timers/promises'
import { sql, type Kysely, type Selectable } from 'kysely'
import type pg from 'pg'
import { auditOperator } from '../audit.ts'
import type { DB, Tenants } from '../db/schema.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import { logFailure, type FailureLog } from '../log-failure.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { findTenant } from '../repositories/tenants.ts'
import { PlacementBusy, tenantLockKey, withOperationLock } from './operation-lock.ts'
import {
  claimShard, createShard, DEFAULT_DDL, pooledShardFor, releaseShard, reserveForRelease, shardedTables,
  type DdlOptions, type Placement,
} from './shards.ts'
import { releaseOwnReservations } from './sweep.ts'

type Executor = Kysely<DB>

export interface PlacementChange {
  from: { placement: Placement, shard: number }
  to: { placement: Placement, shard: number }
  rowsMoved: Record<string, number>
}

/**
 * Re-shards a tenant's rows in the caller's transaction, which must be bound to the tenant and run
 * as the owner, with the target shard's partitions already in place: takes the tenant's lock
 * exclusively (its requests wait), moves every sharded table's rows (the foreign keys between them
 * are deferred to the end), records the placement and marks the tenant `active`. No DDL: the only
 * locks on the shared tables are row locks and the ordinary ones of UPDATE.
 */
export async function moveRows (
  trx: Executor, tenantId: string, from: PlacementChange['from'], to: PlacementChange['to']
): Promise<PlacementChange> {
  await sql`SET CONSTRAINTS ALL DEFERRED`.execute(trx)
  const rowsMoved: Record<string, number> = {}
  for (const table of await shardedTables(trx)) {
    const result = await sql`UPDATE ${sql.id(table)} SET shard = ${to.shard}
                              WHERE tenant_id = ${tenantId} AND shard = ${from.shard}`.execute(trx)
    rowsMoved[table] = Number(result.numAffectedRows ?? 0n)
  }
  await trx.updateTable('tenants').set({ placement: to.placement, shard: to.shard, status: 'active' })
    .where('id', '=', tenantId).execute()
  await sql`SET CONSTRAINTS ALL IMMEDIATE`.execute(trx)
  return { from, to, rowsMoved }
}

export interface MoveOptions {
  /** After marking the tenant `moving`: time for every instance's credential cache to let go of it. */
  graceMs: number
  ddl?: DdlOptions
  /** Warnings: best-effort steps that failed (their leftovers are the next sweep's). */
  log?: FailureLog
}

export interface MoveResult<T> {
  change: PlacementChange
  result: T
  partitionsReleased: boolean
}

/**
 * A placement move, in steps that each leave the tenant consistent:
 * 0. take the tenant's operation lock (PlacementBusy if another move or an erasure holds it); a
 *    tenant left `moving` by a move that died is taken over;
 * 1. mark the tenant `moving` and commit (the notification makes every instance's credential cache
 *    drop the tenant and stop caching it), then wait `graceMs` for requests that had read the cache
 *    to be inside their transactions;
 * 2. to dedicated: create the new shard's partitions in a short DDL transaction (createShard);
 * 3. in one transaction under the tenant's exclusive lock: move its rows, record the placement,
 *    mark it `active`, hand over the new shard (claimShard) or reserve the old one for release, and
 *    run `work` (the audit event) — the only step that holds the tenant's requests;
 * 4. from dedicated: remove the old, now empty partitions (releaseShard); if that fails, the move
 *    stands and the next sweep removes them.
 * A failure before 3 commits leaves the tenant where it was (status back to `active`, the new
 * partitions removed or left reserved for the sweep); after 3 commits, the tenant is moved.
 * Returns undefined for an unknown tenant.
 */
export async function movePlacement<T> (
  pool: pg.Pool,
  tenantId: string,
  placement: Placement,
  options: MoveOptions,
  work: (db: Executor, change: PlacementChange) => Promise<T>
): Promise<MoveResult<T> | undefined> {
  const ddl = options.ddl ?? DEFAULT_DDL
  const log = options.log
  return withOperationLock(pool, tenantId, async (lock) => {
    // Leftovers of an earlier move of this tenant that died (best effort: the sweep retries).
    await releaseOwnReservations(lock, ddl, log)
      .catch(logFailure(log, 'releasing the leftovers of an earlier operation', { tenantId }))
    const marked = await markMoving(pool, tenantId, placement)
    if (marked === undefined) return undefined
    const { from } = marked
    if (marked.same) {
      const change = { from, to: from, rowsMoved: {} }
      const result = await withTenantTransaction(pool, tenantId, async ({ db }) => work(db, change))
      return { change, result, partitionsReleased: true }
    }
    await sleep(options.graceMs)

    let newShard: number | undefined
    let moved: { change: PlacementChange, result: T }
    try {
      const to = placement === 'dedicated'
        ? { placement, shard: newShard = await createShard(lock.client, tenantId, 'move', ddl, log) }
        : { placement, shard: await pooledShardFor(lock.client, tenantId) }
      moved = await withTenantTransaction(pool, tenantId, async ({ db }) => {
        await sql`SELECT pg_advisory_xact_lock(${tenantLockKey(tenantId)})`.execute(db)
        const change = await moveRows(db, tenantId, from, to)
        if (newShard !== undefined) await claimShard(db, newShard)
        if (from.placement === 'dedicated') await reserveForRelease(db, from.shard, tenantId, 'release')
        return { change, result: await work(db, change) }
      })
    } catch (error) {
      // Best effort, the move's own error is the one thrown: what is left here is the next sweep's.
      await withTenantTransaction(pool, tenantId, async ({ db }) => {
        await db.updateTable('tenants').set({ status: 'active' })
          .where('id', '=', tenantId).where('status', '=', 'moving').execute()
      }).catch(logFailure(log, 'setting a tenant whose move failed back to active', { tenantId }))
      if (newShard !== undefined) {
        await releaseShard(lock.client, newShard, ddl, log)
          .catch(logFailure(log, 'removing the partitions of a failed move', { tenantId, shard: newShard }))
      }
      throw error
    }

    let partitionsReleased = true
    if (from.placement === 'dedicated') {
      partitionsReleased = await releaseShard(lock.client, from.shard, ddl, log).then(() => true, (error: unknown) => {
        log?.warn({ tenantId, shard: from.shard, err: error },
          'the old partitions of a moved tenant are left for the next sweep')
        return false
      })
    }
    return { ...moved, partitionsReleased }
  }, log)
}

export interface PlacementChanged {
  tenant: Selectable<Tenants>
  change: PlacementChange
  /** False when the old dedicated partitions are left for the next sweep. */
  partitionsReleased: boolean
  /** The `tenant.placement_changed` audit event; none when the tenant already was where asked. */
  appended: AppendedAuditEvent | undefined
}

/**
 * An operator's placement change: movePlacement, with the `tenant.placement_changed` audit event in
 * the transaction that moves the rows. undefined for an unknown tenant; throws PlacementBusy or
 * SharedTablesBusy.
 */
export async function changePlacement (
  pool: pg.Pool, tenantId: string, placement: Placement, options: MoveOptions & { requestId: string }
): Promise<PlacementChanged | undefined> {
  const moved = await movePlacement(pool, tenantId, placement, options, async (db, change) => {
    const appended = change.from.placement === change.to.placement
      ? undefined
      : await auditOperator(db, options.requestId, 'tenant.placement_changed', { type: 'tenant', id: tenantId },
        { from: change.from.placement, to: change.to.placement, rows_moved: change.rowsMoved })
    return { tenant: (await findTenant(db, tenantId))!, appended }
  })
  if (moved === undefined) return undefined
  return { ...moved.result, change: moved.change, partitionsReleased: moved.partitionsReleased }
}

/**
 * Step 1 of a move: the tenant's current placement, marked `moving` unless it is already where it
 * should go. undefined for an unknown tenant.
 */
async function markMoving (
  pool: pg.Pool, tenantId: string, placement: Placement
): Promise<{ from: PlacementChange['from'], same: boolean } | undefined> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    const current = await db.selectFrom('tenants').select(['placement', 'shard', 'status'])
      .where('id', '=', tenantId).forUpdate().executeTakeFirst()
    if (current === undefined) return undefined
    // `moving` here means a move that died (we hold the operation lock): take it over.
    if (current.status === 'erasing') throw new PlacementBusy('the tenant is being erased')
    const from = { placement: current.placement as Placement, shard: current.shard }
    if (from.placement === placement) {
      if (current.status === 'moving') {
        await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).execute()
      }
      return { from, same: true }
    }
    await db.updateTable('tenants').set({ status: 'moving' }).where('id', '=', tenantId).execute()
    return { from, same: false }
  })
}
