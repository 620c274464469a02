import { CompiledQuery, Kysely, sql } from 'kysely'
import pg from 'pg'
import type { DB } from '../db/schema.ts'
import { TENANT_LOCK_SALT, withTenantTransaction } from '../db/tenant-transaction.ts'

/**
 * Where a tenant's rows of the sharded tables (invoices, invoice_lines, audit_events, ...) live:
 * - pooled: one of 16 shared shards chosen by hashing the tenant id; onboarding needs no DDL, so it
 *   costs the same at 10 or 100,000 tenants;
 * - dedicated: partitions of its own in every sharded table, for a tenant that needs physical
 *   separation (maintenance, size, erasure by DROP).
 * Decided at onboarding and changeable later (movePlacement). See sql/0007_placement.sql.
 *
 * Partition DDL locks the *shared* parent tables: CREATE TABLE ... PARTITION OF takes ACCESS
 * EXCLUSIVE on the parent, and while that lock is held — or merely queued — every tenant's queries
 * on that table wait. So DDL never shares a transaction with anything long:
 * - partitions are created in a short transaction of their own (createShard) with lock_timeout and
 *   bounded retries, before the transaction that moves rows; the new shard is recorded in
 *   shard_reservations in that same transaction, tying the partitions to the operation until the
 *   transaction that hands them to the tenant deletes the reservation;
 * - partitions are removed with DETACH PARTITION ... CONCURRENTLY (which does not block other
 *   queries on the parent) and then DROP, each statement on its own with lock_timeout and retries
 *   (releaseShard), after the shard was reserved for release in the transaction that emptied it.
 * A shard reserved by an operation that died (every operation holds its tenant's operation lock,
 * see OperationLock) is released by the next sweep (sweepShards), so a failure at any point leaves
 * the tenant whole where it was, or whole where it went, plus at most some empty partitions that no
 * tenant lives in and that the sweep removes.
 */
export type Placement = 'pooled' | 'dedicated'

type Executor = Kysely<DB>

/**
 * A transaction-level advisory lock per tenant: every tenant transaction holds it shared from its
 * first statement (bind_tenant), placement moves and erasure take it exclusively, so a request never
 * reads a shard that is being moved away under it, and an erasure waits for the tenant's in-flight
 * requests.
 */
export const tenantLockKey = (tenantId: string) => sql<string>`hashtextextended(${tenantId}::text, ${TENANT_LOCK_SALT})`

/** Salt of the per-tenant operation lock (OperationLock): distinct from the request lock. */
export const OPERATION_LOCK_SALT = 7302

/** How partition DDL waits for the shared parents' locks: briefly, a bounded number of times. */
export interface DdlOptions {
  /** lock_timeout of each attempt: the longest other tenants' queries queue behind it. */
  lockTimeoutMs: number
  attempts: number
  /** Pause before attempt n: n × backoffMs. */
  backoffMs: number
}

export const DEFAULT_DDL: DdlOptions = { lockTimeoutMs: 200, attempts: 10, backoffMs: 100 }

/** Partition DDL could not get its lock within DdlOptions: nothing was changed; retry later. */
export class SharedTablesBusy extends Error {
  override name = 'SharedTablesBusy'
}

export class PlacementBusy extends Error {
  override name = 'PlacementBusy'
}

const LOCK_NOT_AVAILABLE = new Set(['55P03', '40P01']) // lock_timeout, deadlock_detected

const isLockTimeout = (error: unknown): boolean => LOCK_NOT_AVAILABLE.has((error as { code?: string }).code ?? '')

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Runs `attempt` until it succeeds, retrying lock timeouts only; SharedTablesBusy after the last one. */
async function withLockRetries<T> (ddl: DdlOptions, what: string, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt()
    } catch (error) {
      if (!isLockTimeout(error)) throw error
      if (n >= ddl.attempts) throw new SharedTablesBusy(`${what}: the shared tables stayed locked (${ddl.attempts} attempts of ${ddl.lockTimeoutMs} ms)`)
      await sleep(n * ddl.backoffMs)
    }
  }
}

const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`

/** Every table partitioned by shard, from the catalog: this is the one declaration. */
export async function shardedTables (db: Executor | pg.ClientBase): Promise<string[]> {
  const rows = await run(db, `
    SELECT c.relname AS name
      FROM pg_partitioned_table pt
      JOIN pg_class c ON c.oid = pt.partrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
     WHERE n.nspname = 'public' AND a.attname = 'shard' AND NOT c.relispartition
     ORDER BY c.relname`, [])
  return rows.map((r) => r.name as string)
}

/** Runs one statement on a Kysely transaction or on a plain pg client. */
async function run (db: Executor | pg.ClientBase, text: string, values: unknown[]): Promise<Array<Record<string, unknown>>> {
  if (db instanceof Kysely) return (await db.executeQuery(CompiledQuery.raw(text, values))).rows as Array<Record<string, unknown>>
  return (await db.query(text, values)).rows as Array<Record<string, unknown>>
}

/**
 * The shard a new placement gets, inside the caller's transaction: the tenant's pooled shard, or a
 * new dedicated shard whose partitions are created right here — which holds the shared parents'
 * ACCESS EXCLUSIVE lock until that transaction ends. Only for transactions that stay short; the
 * server's own paths use createShard instead.
 */
export async function allocateShard (db: Executor | pg.ClientBase, tenantId: string, placement: Placement): Promise<number> {
  if (placement === 'pooled') return pooledShardFor(db, tenantId)
  const [row] = await run(db, "SELECT nextval('dedicated_shards')::integer AS shard", [])
  await run(db, 'SELECT create_shard_partitions($1::integer)', [row!.shard])
  return row!.shard as number
}

export async function pooledShardFor (db: Executor | pg.ClientBase, tenantId: string): Promise<number> {
  const [row] = await run(db, 'SELECT pooled_shard_for($1::uuid) AS shard', [tenantId])
  return row!.shard as number
}

export type ReservationPurpose = 'onboarding' | 'import' | 'move' | 'release' | 'erasure'

/**
 * Creates a new dedicated shard's partitions in a short transaction of its own on `client` (which
 * must not be inside a transaction), reserved for `tenantId` until the transaction that gives the
 * shard to the tenant calls claimShard. Waits for the parents' locks at most ddl.lockTimeoutMs per
 * attempt, so other tenants' queries never queue behind it for longer.
 */
export async function createShard (client: pg.ClientBase, tenantId: string, purpose: 'onboarding' | 'import' | 'move', ddl: DdlOptions = DEFAULT_DDL): Promise<number> {
  const { rows: [row] } = await client.query<{ shard: number }>("SELECT nextval('dedicated_shards')::integer AS shard")
  const shard = row!.shard
  await withLockRetries(ddl, `creating the partitions of shard ${shard}`, async () => {
    await client.query('BEGIN')
    try {
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(ddl.lockTimeoutMs))}`)
      await client.query('SELECT create_shard_partitions($1::integer)', [shard])
      await client.query('INSERT INTO shard_reservations (shard, subject_tenant_id, purpose) VALUES ($1, $2, $3)', [shard, tenantId, purpose])
      await client.query('COMMIT')
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {})
      throw error
    }
  })
  return shard
}

/** In the transaction that makes `shard` a tenant's: the partitions stop being reserved. */
export async function claimShard (db: Executor | pg.ClientBase, shard: number): Promise<void> {
  await run(db, 'DELETE FROM shard_reservations WHERE shard = $1', [shard])
}

/** In the transaction that empties a dedicated shard: reserve it for releaseShard (or a later sweep). */
export async function reserveForRelease (db: Executor | pg.ClientBase, shard: number, tenantId: string, purpose: 'release' | 'erasure'): Promise<void> {
  await run(db, `INSERT INTO shard_reservations (shard, subject_tenant_id, purpose) VALUES ($1, $2, $3)
                 ON CONFLICT (shard) DO UPDATE SET purpose = excluded.purpose, subject_tenant_id = excluded.subject_tenant_id`, [shard, tenantId, purpose])
}

/**
 * Removes the partitions of a dedicated shard that no tenant lives in, and its reservation. Each
 * statement runs on its own on `client` (outside any transaction block, as DETACH ... CONCURRENTLY
 * requires): DETACH CONCURRENTLY takes only SHARE UPDATE EXCLUSIVE on the parent, so other tenants'
 * reads and writes go on while it waits for the queries that started before it; a detach left
 * pending by an interruption is completed with FINALIZE. DROP of the detached table is what remains
 * of the parent locks: PostgreSQL removes the table's foreign-key triggers from the tables it
 * references (tenants, customers, invoices), which takes ACCESS EXCLUSIVE on those briefly; every
 * such lock is waited for at most ddl.lockTimeoutMs per attempt. Referencing tables go first.
 * Idempotent: a retry continues where a failed run stopped.
 */
export async function releaseShard (client: pg.ClientBase, shard: number, ddl: DdlOptions = DEFAULT_DDL): Promise<void> {
  const { rows: [guard] } = await client.query<{ pooled: boolean, tenant: boolean }>(
    'SELECT $1::integer < pooled_shards() AS pooled, EXISTS (SELECT 1 FROM tenants WHERE shard = $1) AS tenant', [shard])
  if (guard!.pooled || guard!.tenant) throw new Error(`shard ${shard} is not a released dedicated shard`)
  const tables = await shardedTablesChildrenFirst(client)
  await client.query(`SET lock_timeout = ${Math.max(1, Math.round(ddl.lockTimeoutMs))}`)
  try {
    for (const table of tables) {
      const partition = `${table}_s${shard}`
      // Only one partition of a table can be pending detach at a time: complete any that an
      // interrupted release of another shard left behind (those shards are no tenant's either).
      const { rows: pending } = await client.query<{ name: string }>(`
        SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass(format('public.%I', $1::text)) AND i.inhdetachpending AND c.relname <> $2`, [table, partition])
      for (const other of pending) {
        await withLockRetries(ddl, `completing the detach of ${other.name}`, async () => {
          await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(other.name)} FINALIZE`)
        })
      }
      await withLockRetries(ddl, `releasing ${partition}`, async () => {
        const { rows: [state] } = await client.query<{ exists: boolean, attached: boolean, pending: boolean }>(`
          SELECT to_regclass(format('public.%I', $1::text)) IS NOT NULL AS exists,
                 EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = to_regclass(format('public.%I', $1::text))) AS attached,
                 coalesce((SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = to_regclass(format('public.%I', $1::text))), false) AS pending`,
        [partition])
        if (!state!.exists) return
        if (state!.pending) await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(partition)} FINALIZE`)
        else if (state!.attached) await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(partition)} CONCURRENTLY`)
        await client.query(`DROP TABLE ${ident(partition)}`)
      })
    }
  } finally {
    await client.query('RESET lock_timeout').catch(() => {})
  }
  await client.query('DELETE FROM shard_reservations WHERE shard = $1', [shard])
  await client.query(`UPDATE erasure_receipts SET partitions_dropped = true, partitions_dropped_at = now()
                       WHERE shard = $1 AND NOT partitions_dropped`, [shard])
}

/** Sharded tables, those whose foreign keys reference another sharded table first. */
async function shardedTablesChildrenFirst (client: pg.ClientBase): Promise<string[]> {
  const tables = await shardedTables(client)
  const { rows: edges } = await client.query<{ child: string, parent: string }>(`
    SELECT DISTINCT cc.relname AS child, pc.relname AS parent
      FROM pg_constraint k JOIN pg_class cc ON cc.oid = k.conrelid JOIN pg_class pc ON pc.oid = k.confrelid
     WHERE k.contype = 'f' AND NOT cc.relispartition AND NOT pc.relispartition AND cc.oid <> pc.oid`)
  const ordered: string[] = []
  const remaining = new Set(tables)
  while (remaining.size > 0) {
    // A table goes once no remaining table references it.
    const ready = [...remaining].filter((t) => !edges.some((e) => e.parent === t && e.child !== t && remaining.has(e.child))).sort()
    if (ready.length === 0) throw new Error('sharded tables have a foreign-key cycle')
    for (const t of ready) { ordered.push(t); remaining.delete(t) }
  }
  return ordered
}

/**
 * Every tenant operation that changes where a tenant's rows live (a placement move, an erasure, a
 * dedicated onboarding or import) holds this session-level advisory lock for its whole life, on a
 * connection of its own (outside the pool, and outside any transaction, so it can also run
 * DETACH ... CONCURRENTLY). A crashed process's connection closes and the lock goes with it: a
 * tenant marked `moving`, or a shard reserved for it, whose lock can be taken has no live operation
 * behind it, and is recovered.
 */
export class OperationLock {
  readonly client: pg.Client
  readonly tenantId: string
  #released = false

  private constructor (client: pg.Client, tenantId: string) {
    this.client = client
    this.tenantId = tenantId
  }

  /** The lock, or undefined when another operation on the tenant holds it. */
  static async tryAcquire (pool: pg.Pool, tenantId: string): Promise<OperationLock | undefined> {
    const client = new pg.Client({ ...pool.options, application_name: 'rowfence-operation' } as pg.ClientConfig)
    client.on('error', () => {}) // a broken connection surfaces on the next query
    await client.connect()
    try {
      const { rows: [row] } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtextextended($1::text, $2)) AS ok', [tenantId, OPERATION_LOCK_SALT])
      if (row!.ok) return new OperationLock(client, tenantId)
    } catch (error) {
      await client.end().catch(() => {})
      throw error
    }
    await client.end().catch(() => {})
    return undefined
  }

  /** Ends the connection, which releases the lock. */
  async release (): Promise<void> {
    if (this.#released) return
    this.#released = true
    await this.client.end().catch(() => {})
  }
}

/** Runs `work` holding the tenant's operation lock; PlacementBusy when another operation holds it. */
export async function withOperationLock<T> (pool: pg.Pool, tenantId: string, work: (lock: OperationLock) => Promise<T>): Promise<T> {
  const lock = await OperationLock.tryAcquire(pool, tenantId)
  if (lock === undefined) throw new PlacementBusy('another operation on this tenant (a placement move or an erasure) is in progress')
  try {
    return await work(lock)
  } finally {
    await lock.release()
  }
}

/**
 * Removes the shards reserved for the lock's tenant by earlier operations that died: the caller
 * holds the tenant's operation lock, so none of them is in use. Returns the shards released.
 */
export async function releaseOwnReservations (lock: OperationLock, ddl: DdlOptions = DEFAULT_DDL): Promise<number[]> {
  const { rows } = await lock.client.query<{ shard: number }>(`
    SELECT r.shard FROM shard_reservations r
     WHERE r.subject_tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.shard = r.shard)
     ORDER BY r.shard`, [lock.tenantId])
  for (const { shard } of rows) await releaseShard(lock.client, shard, ddl)
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
 * holding that tenant's lock (its own shards are its business).
 */
export async function sweepShards (pool: pg.Pool, options: { ddl?: DdlOptions, skipTenant?: string } = {}): Promise<SweepResult> {
  const result: SweepResult = { tenantsReset: [], shardsReleased: [], shardsLeft: [] }
  const { rows: moving } = await pool.query<{ id: string }>("SELECT id FROM tenants WHERE status = 'moving' ORDER BY id")
  for (const { id } of moving) {
    if (id === options.skipTenant) continue
    const lock = await OperationLock.tryAcquire(pool, id)
    if (lock === undefined) continue
    try {
      if (await resetStuckMove(pool, id)) result.tenantsReset.push(id)
    } finally {
      await lock.release()
    }
  }
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
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN sharded s ON c.relname ~ ('^' || s.relname || '_s[0-9]+$')
     WHERE n.nspname = 'public' AND c.relkind = 'r'
     ORDER BY 1`)
  const { rows: owners } = await pool.query<{ shard: number, tenant: boolean, subject: string | null }>(`
    SELECT s.shard, EXISTS (SELECT 1 FROM tenants t WHERE t.shard = s.shard) AS tenant,
           (SELECT r.subject_tenant_id::text FROM shard_reservations r WHERE r.shard = s.shard) AS subject
      FROM unnest($1::integer[]) AS s(shard)
     WHERE s.shard >= pooled_shards()`, [present.map((p) => p.shard)])
  const { rows: reservedOnly } = await pool.query<{ shard: number, subject: string }>(
    'SELECT shard, subject_tenant_id::text AS subject FROM shard_reservations WHERE NOT (shard = ANY ($1::integer[])) ORDER BY shard', [present.map((p) => p.shard)])
  const candidates = [...owners.filter((o) => !o.tenant), ...reservedOnly.map((r) => ({ shard: r.shard, tenant: false, subject: r.subject }))]
  for (const candidate of candidates) {
    if (candidate.subject !== null && candidate.subject === options.skipTenant) continue
    // An unreserved shard was orphaned before reservations existed (or by hand): nobody's operation.
    const lock = candidate.subject === null ? undefined : await OperationLock.tryAcquire(pool, candidate.subject)
    if (candidate.subject !== null && lock === undefined) { result.shardsLeft.push(candidate.shard); continue }
    const client = lock?.client ?? new pg.Client({ ...pool.options, application_name: 'rowfence-operation' } as pg.ClientConfig)
    try {
      if (lock === undefined) await client.connect()
      await releaseShard(client, candidate.shard, options.ddl)
      result.shardsReleased.push(candidate.shard)
    } catch {
      result.shardsLeft.push(candidate.shard)
    } finally {
      if (lock !== undefined) await lock.release()
      else await client.end().catch(() => {})
    }
  }
  return result
}

/** Sets a tenant left `moving` back to `active`; the caller holds its operation lock. */
async function resetStuckMove (pool: pg.Pool, tenantId: string): Promise<boolean> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    const reset = await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).where('status', '=', 'moving').executeTakeFirst()
    return Number(reset.numUpdatedRows) > 0
  })
}

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
export async function moveRows (trx: Executor, tenantId: string, from: { placement: Placement, shard: number }, to: { placement: Placement, shard: number }): Promise<PlacementChange> {
  await sql`SET CONSTRAINTS ALL DEFERRED`.execute(trx)
  const rowsMoved: Record<string, number> = {}
  for (const table of await shardedTables(trx)) {
    const result = await sql`UPDATE ${sql.id(table)} SET shard = ${to.shard} WHERE tenant_id = ${tenantId} AND shard = ${from.shard}`.execute(trx)
    rowsMoved[table] = Number(result.numAffectedRows ?? 0n)
  }
  await trx.updateTable('tenants').set({ placement: to.placement, shard: to.shard, status: 'active' }).where('id', '=', tenantId).execute()
  await sql`SET CONSTRAINTS ALL IMMEDIATE`.execute(trx)
  return { from, to, rowsMoved }
}

export interface MoveOptions {
  /** After marking the tenant `moving`: time for every instance's credential cache to let go of it. */
  graceMs: number
  ddl?: DdlOptions
  /** Warnings (a release left for the sweep). */
  log?: (message: string, details: Record<string, unknown>) => void
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
): Promise<{ change: PlacementChange, result: T, partitionsReleased: boolean } | undefined> {
  const ddl = options.ddl ?? DEFAULT_DDL
  return withOperationLock(pool, tenantId, async (lock) => {
    // Leftovers of an earlier move of this tenant that died (best effort: the sweep retries).
    await releaseOwnReservations(lock, ddl).catch(() => {})
    const marked = await withTenantTransaction(pool, tenantId, async ({ db }) => {
      const current = await db.selectFrom('tenants').select(['placement', 'shard', 'status']).where('id', '=', tenantId).forUpdate().executeTakeFirst()
      if (current === undefined) return undefined
      // `moving` here means a move that died (we hold the operation lock): take it over.
      if (current.status === 'erasing') throw new PlacementBusy('the tenant is being erased')
      const from = { placement: current.placement as Placement, shard: current.shard }
      if (from.placement === placement) {
        if (current.status === 'moving') await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).execute()
        return { from, same: true }
      }
      await db.updateTable('tenants').set({ status: 'moving' }).where('id', '=', tenantId).execute()
      return { from, same: false }
    })
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
        ? { placement, shard: newShard = await createShard(lock.client, tenantId, 'move', ddl) }
        : { placement, shard: await pooledShardFor(lock.client, tenantId) }
      moved = await withTenantTransaction(pool, tenantId, async ({ db }) => {
        await sql`SELECT pg_advisory_xact_lock(${tenantLockKey(tenantId)})`.execute(db)
        const change = await moveRows(db, tenantId, from, to)
        if (newShard !== undefined) await claimShard(db, newShard)
        if (from.placement === 'dedicated') await reserveForRelease(db, from.shard, tenantId, 'release')
        return { change, result: await work(db, change) }
      })
    } catch (error) {
      await withTenantTransaction(pool, tenantId, async ({ db }) => {
        await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).where('status', '=', 'moving').execute()
      }).catch(() => {})
      if (newShard !== undefined) await releaseShard(lock.client, newShard, ddl).catch(() => {}) // else: the sweep
      throw error
    }

    let partitionsReleased = true
    if (from.placement === 'dedicated') {
      partitionsReleased = await releaseShard(lock.client, from.shard, ddl).then(() => true, (error: unknown) => {
        options.log?.('the old partitions of a moved tenant are left for the next sweep', { tenantId, shard: from.shard, err: error })
        return false
      })
    }
    return { ...moved, partitionsReleased }
  })
}
