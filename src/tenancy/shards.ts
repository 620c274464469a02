import { setTimeout as sleep } from 'node:timers/promises'
import { CompiledQuery, Kysely } from 'kysely'
import type pg from 'pg'
import type { DB } from '../db/schema.ts'
import { logFailure, type FailureLog } from '../log-failure.ts'
import { ident } from './tenant-tables.ts'

/**
 * Where a tenant's rows of the sharded tables (invoices, invoice_lines, audit_events, ...) live:
 * - pooled: one of 16 shared shards chosen by hashing the tenant id; onboarding needs no DDL, so it
 *   does not slow down as tenants are added;
 * - dedicated: partitions of its own in every sharded table, for a tenant that needs physical
 *   separation (maintenance, size, erasure by DROP).
 * Decided at onboarding and changeable later (move.ts: movePlacement). See sql/0007_placement.sql.
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
 * see operation-lock.ts) is released by the next sweep (sweep.ts), so a failure at any point leaves
 * the tenant whole where it was, or whole where it went, plus at most some empty partitions that no
 * tenant lives in and that the sweep removes.
 */
export type Placement = 'pooled' | 'dedicated'

type Executor = Kysely<DB>

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

const LOCK_NOT_AVAILABLE = new Set(['55P03', '40P01']) // lock_timeout, deadlock_detected

const isLockTimeout = (error: unknown): boolean => LOCK_NOT_AVAILABLE.has((error as { code?: string }).code ?? '')

/** Runs `attempt` until it succeeds, retrying lock timeouts only; SharedTablesBusy after the last one. */
async function withLockRetries<T> (ddl: DdlOptions, what: string, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt()
    } catch (error) {
      if (!isLockTimeout(error)) throw error
      if (n >= ddl.attempts) {
        const tried = `${ddl.attempts} attempts of ${ddl.lockTimeoutMs} ms`
        throw new SharedTablesBusy(`${what}: the shared tables stayed locked (${tried})`)
      }
      await sleep(n * ddl.backoffMs)
    }
  }
}

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

type Row = Record<string, unknown>

/** Runs one statement on a Kysely transaction or on a plain pg client. */
async function run (db: Executor | pg.ClientBase, text: string, values: unknown[]): Promise<Row[]> {
  if (db instanceof Kysely) return (await db.executeQuery(CompiledQuery.raw(text, values))).rows as Row[]
  return (await db.query(text, values)).rows as Row[]
}

/**
 * The shard a new placement gets, inside the caller's transaction: the tenant's pooled shard, or a
 * new dedicated shard whose partitions are created right here — which holds the shared parents'
 * ACCESS EXCLUSIVE lock until that transaction ends. Only for transactions that stay short; the
 * server's own paths use createShard instead.
 */
export async function allocateShard (
  db: Executor | pg.ClientBase, tenantId: string, placement: Placement
): Promise<number> {
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
 * attempt, so other tenants' queries never queue behind it for longer. `log`: where a failed
 * rollback of an attempt is reported.
 */
export async function createShard (
  client: pg.ClientBase, tenantId: string, purpose: 'onboarding' | 'import' | 'move', ddl: DdlOptions = DEFAULT_DDL,
  log?: FailureLog
): Promise<number> {
  const { rows: [row] } = await client.query<{ shard: number }>("SELECT nextval('dedicated_shards')::integer AS shard")
  const shard = row!.shard
  await withLockRetries(ddl, `creating the partitions of shard ${shard}`, async () => {
    await client.query('BEGIN')
    try {
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(ddl.lockTimeoutMs))}`)
      await client.query('SELECT create_shard_partitions($1::integer)', [shard])
      await client.query('INSERT INTO shard_reservations (shard, subject_tenant_id, purpose) VALUES ($1, $2, $3)',
        [shard, tenantId, purpose])
      await client.query('COMMIT')
    } catch (error) {
      // The attempt's own error is the one that counts; a connection that cannot even roll back
      // fails the next attempt too, and the server rolls back when the connection goes.
      await client.query('ROLLBACK').catch(logFailure(log, 'rolling back a partition creation', { tenantId, shard }))
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
export async function reserveForRelease (
  db: Executor | pg.ClientBase, shard: number, tenantId: string, purpose: 'release' | 'erasure'
): Promise<void> {
  await run(db, `INSERT INTO shard_reservations (shard, subject_tenant_id, purpose) VALUES ($1, $2, $3)
                 ON CONFLICT (shard) DO UPDATE
                 SET purpose = excluded.purpose, subject_tenant_id = excluded.subject_tenant_id`,
  [shard, tenantId, purpose])
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
 * Idempotent: a retry continues where a failed run stopped. `log`: where a failed reset is reported.
 */
export async function releaseShard (
  client: pg.ClientBase, shard: number, ddl: DdlOptions = DEFAULT_DDL, log?: FailureLog
): Promise<void> {
  const { rows: [guard] } = await client.query<{ pooled: boolean, tenant: boolean }>(
    `SELECT $1::integer < pooled_shards() AS pooled,
            EXISTS (SELECT 1 FROM tenants WHERE shard = $1) AS tenant`, [shard])
  if (guard!.pooled || guard!.tenant) throw new Error(`shard ${shard} is not a released dedicated shard`)
  const tables = await shardedTablesChildrenFirst(client)
  await client.query(`SET lock_timeout = ${Math.max(1, Math.round(ddl.lockTimeoutMs))}`)
  try {
    for (const table of tables) await releasePartition(client, table, `${table}_s${shard}`, ddl)
  } finally {
    // A connection that cannot reset fails its next statement as well, which reports it.
    await client.query('RESET lock_timeout').catch(logFailure(log, 'resetting lock_timeout after a release', { shard }))
  }
  await client.query('DELETE FROM shard_reservations WHERE shard = $1', [shard])
  await client.query(`UPDATE erasure_receipts SET partitions_dropped = true, partitions_dropped_at = now()
                       WHERE shard = $1 AND NOT partitions_dropped`, [shard])
}

/** Detaches (or finishes detaching) and drops one partition of `table`, if it is still there. */
async function releasePartition (
  client: pg.ClientBase, table: string, partition: string, ddl: DdlOptions
): Promise<void> {
  // Only one partition of a table can be pending detach at a time: complete any that an
  // interrupted release of another shard left behind (those shards are no tenant's either).
  const { rows: pending } = await client.query<{ name: string }>(`
    SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = to_regclass(format('public.%I', $1::text)) AND i.inhdetachpending AND c.relname <> $2`,
  [table, partition])
  for (const other of pending) {
    await withLockRetries(ddl, `completing the detach of ${other.name}`, async () => {
      await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(other.name)} FINALIZE`)
    })
  }
  await withLockRetries(ddl, `releasing ${partition}`, async () => {
    const { rows: [state] } = await client.query<{ exists: boolean, attached: boolean, pending: boolean }>(`
      SELECT to_regclass(format('public.%I', $1::text)) IS NOT NULL AS exists,
             EXISTS (SELECT 1 FROM pg_inherits i
                      WHERE i.inhrelid = to_regclass(format('public.%I', $1::text))) AS attached,
             coalesce((SELECT i.inhdetachpending FROM pg_inherits i
                        WHERE i.inhrelid = to_regclass(format('public.%I', $1::text))), false) AS pending`,
    [partition])
    if (!state!.exists) return
    if (state!.pending) await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(partition)} FINALIZE`)
    else if (state!.attached) {
      await client.query(`ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(partition)} CONCURRENTLY`)
    }
    await client.query(`DROP TABLE ${ident(partition)}`)
  })
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
    const referenced = (t: string): boolean =>
      edges.some((e) => e.parent === t && e.child !== t && remaining.has(e.child))
    const ready = [...remaining].filter((t) => !referenced(t)).sort()
    if (ready.length === 0) throw new Error('sharded tables have a foreign-key cycle')
    for (const t of ready) { ordered.push(t); remaining.delete(t) }
  }
  return ordered
}
