import { CompiledQuery, Kysely, sql } from 'kysely'
import type pg from 'pg'
import type { DB } from './schema.ts'
import { TENANT_LOCK_SALT, withTenantTransaction } from './tenant-transaction.ts'

/**
 * Where a tenant's rows of the sharded tables (invoices, invoice_lines, audit_events, ...) live:
 * - pooled: one of 16 shared shards chosen by hashing the tenant id; onboarding needs no DDL, so it
 *   costs the same at 10 or 100,000 tenants;
 * - dedicated: partitions of its own in every sharded table, for a tenant that needs physical
 *   separation (maintenance, size, erasure by DROP). Onboarding creates them in the same transaction.
 * Decided at onboarding and changeable later (changePlacement). See sql/0007_placement.sql.
 */
export type Placement = 'pooled' | 'dedicated'

type Executor = Kysely<DB>

/**
 * A transaction-level advisory lock per tenant: every tenant transaction holds it shared from its
 * first statement (beginTenantTransaction), placement moves and erasure take it exclusively, so a
 * request never reads a shard that is being moved away under it, and an erasure waits for the
 * tenant's in-flight requests.
 */
export const tenantLockKey = (tenantId: string) => sql<string>`hashtextextended(${tenantId}::text, ${TENANT_LOCK_SALT})`

/** Every table partitioned by shard, from the catalog: this is the one declaration. */
export async function shardedTables (db: Executor): Promise<string[]> {
  const { rows } = await sql<{ name: string }>`
    SELECT c.relname AS name
      FROM pg_partitioned_table pt
      JOIN pg_class c ON c.oid = pt.partrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
     WHERE n.nspname = 'public' AND a.attname = 'shard' AND NOT c.relispartition
     ORDER BY c.relname`.execute(db)
  return rows.map((r) => r.name)
}

/** Runs one statement on a Kysely transaction or on a plain pg client inside a transaction. */
async function run (db: Executor | pg.ClientBase, text: string, values: unknown[]): Promise<Array<Record<string, unknown>>> {
  if (db instanceof Kysely) return (await db.executeQuery(CompiledQuery.raw(text, values))).rows as Array<Record<string, unknown>>
  return (await db.query(text, values)).rows as Array<Record<string, unknown>>
}

/**
 * The shard a new placement gets: the tenant's pooled shard, or a new dedicated shard whose
 * partitions are created here, inside the caller's transaction.
 */
export async function allocateShard (db: Executor | pg.ClientBase, tenantId: string, placement: Placement): Promise<number> {
  if (placement === 'pooled') {
    const [row] = await run(db, 'SELECT pooled_shard_for($1::uuid) AS shard', [tenantId])
    return row!.shard as number
  }
  const [row] = await run(db, "SELECT nextval('dedicated_shards')::integer AS shard", [])
  await run(db, 'SELECT create_shard_partitions($1::integer)', [row!.shard])
  return row!.shard as number
}

const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`

/**
 * Detaches and drops the partitions of a dedicated shard. Detaching first matters: a foreign key
 * between two sharded tables (invoice_lines → invoices) points at each partition of the referenced
 * table, and only DETACH removes that link.
 */
export async function dropShardPartitions (db: Executor | pg.ClientBase, shard: number): Promise<void> {
  const tables = (await run(db, `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
    JOIN pg_class p ON p.oid = i.inhrelid WHERE p.relname LIKE '%\\_s' || $1::text`, [shard])).map((r) => r.name as string)
  for (const table of tables) {
    const partition = `${table}_s${shard}`
    await run(db, `ALTER TABLE ${ident(table)} DETACH PARTITION ${ident(partition)}`, [])
    await run(db, `DROP TABLE ${ident(partition)}`, [])
  }
}

export interface PlacementChange {
  from: { placement: Placement, shard: number }
  to: { placement: Placement, shard: number }
  rowsMoved: Record<string, number>
}

/**
 * Moves a tenant to another placement in one transaction, which must be bound to the tenant and
 * run as the owner: allocate the new shard, re-shard every sharded table's rows (the foreign keys
 * between them are deferred to COMMIT), record the placement, and drop a dedicated shard left empty.
 */
export async function changePlacement (trx: Executor, tenantId: string, placement: Placement): Promise<PlacementChange | undefined> {
  await sql`SELECT pg_advisory_xact_lock(${tenantLockKey(tenantId)})`.execute(trx)
  const current = await trx.selectFrom('tenants').select(['placement', 'shard']).where('id', '=', tenantId).forUpdate().executeTakeFirst()
  if (current === undefined) return undefined
  const from = { placement: current.placement as Placement, shard: current.shard }
  if (from.placement === placement) return { from, to: from, rowsMoved: {} }
  const shard = await allocateShard(trx, tenantId, placement)
  await sql`SET CONSTRAINTS ALL DEFERRED`.execute(trx)
  const rowsMoved: Record<string, number> = {}
  for (const table of await shardedTables(trx)) {
    const result = await sql`UPDATE ${sql.id(table)} SET shard = ${shard} WHERE tenant_id = ${tenantId} AND shard = ${from.shard}`.execute(trx)
    rowsMoved[table] = Number(result.numAffectedRows ?? 0n)
  }
  await trx.updateTable('tenants').set({ placement, shard }).where('id', '=', tenantId).execute()
  await sql`SET CONSTRAINTS ALL IMMEDIATE`.execute(trx)
  if (from.placement === 'dedicated') await dropShardPartitions(trx, from.shard)
  return { from, to: { placement, shard }, rowsMoved }
}

export class PlacementBusy extends Error {
  override name = 'PlacementBusy'
}

/**
 * A placement move as seen by the server instances: mark the tenant `moving` and commit (the
 * notification makes every instance's credential cache drop the tenant and stop caching it), wait
 * `graceMs` for requests that had read the cache to be inside their transactions, then move under
 * the tenant's exclusive lock (changePlacement), and mark it `active` again. `work` runs inside the
 * move's transaction (the audit event). Returns undefined for an unknown tenant.
 */
export async function movePlacement<T> (
  pool: pg.Pool,
  tenantId: string,
  placement: Placement,
  graceMs: number,
  work: (db: Executor, change: PlacementChange) => Promise<T>
): Promise<{ change: PlacementChange, result: T } | undefined> {
  const marked = await withTenantTransaction(pool, tenantId, async ({ db }) => {
    const current = await db.selectFrom('tenants').select(['placement', 'status']).where('id', '=', tenantId).forUpdate().executeTakeFirst()
    if (current === undefined) return 'missing'
    if (current.status !== 'active') return 'busy'
    if (current.placement === placement) return 'same'
    await db.updateTable('tenants').set({ status: 'moving' }).where('id', '=', tenantId).execute()
    return 'marked'
  })
  if (marked === 'missing') return undefined
  if (marked === 'busy') throw new PlacementBusy('the tenant is being moved or erased')
  if (marked === 'marked') await new Promise((resolve) => setTimeout(resolve, graceMs))
  try {
    return await withTenantTransaction(pool, tenantId, async ({ db }) => {
      const change = (await changePlacement(db, tenantId, placement))!
      await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).where('status', '=', 'moving').execute()
      return { change, result: await work(db, change) }
    })
  } catch (error) {
    await withTenantTransaction(pool, tenantId, async ({ db }) => {
      await db.updateTable('tenants').set({ status: 'active' }).where('id', '=', tenantId).where('status', '=', 'moving').execute()
    }).catch(() => {})
    throw error
  }
}
