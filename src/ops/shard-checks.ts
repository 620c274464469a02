import pg from 'pg'
import { connectionOptions, PLAINTEXT, type DatabaseTls } from '../db/tls.ts'
import { UnsafeDatabaseError } from './safety-checks.ts'

/**
 * Start-up check that every sharded table (PARTITION BY LIST (shard)) has a partition for every
 * live shard: the pooled shards, every tenant's shard, and the dedicated shards being created for
 * a tenant (shard_reservations). create_shard_partitions runs only when a shard is created, so a
 * sharded table added later has no partition for the dedicated tenants that already exist — their
 * inserts would fail (no partition of relation ... found for row) — unless its migration ends with
 * `SELECT create_missing_shard_partitions()` (sql/0011). This check is what notices a migration
 * that forgot.
 *
 * Run it as the owner (DATABASE_URL): only the owner's registry policy shows every tenant's shard.
 * Each finding is one sentence naming the table and the shards it lacks.
 */
export async function checkShardPartitions (owner: pg.Pool | pg.ClientBase): Promise<string[]> {
  const { rows } = await owner.query<{ table_name: string, missing: number[], tenants: string[] }>(`
    WITH sharded AS (
      SELECT c.oid, c.relname FROM pg_partitioned_table pt
        JOIN pg_class c ON c.oid = pt.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
       WHERE n.nspname = 'public' AND a.attname = 'shard' AND NOT c.relispartition
    ), live AS (
      SELECT g AS shard, NULL::uuid AS tenant FROM generate_series(0, pooled_shards() - 1) AS g
      UNION SELECT t.shard, CASE WHEN t.shard >= pooled_shards() THEN t.id END FROM tenants t
      UNION SELECT r.shard, r.subject_tenant_id FROM shard_reservations r
             WHERE r.purpose IN ('onboarding', 'import', 'move')
    ), covered AS (
      -- Partitions attached (not pending detach) for exactly one shard value.
      SELECT i.inhparent AS parent,
             substring(pg_get_expr(p.relpartbound, p.oid) FROM '^FOR VALUES IN \\((-?[0-9]+)\\)$')::integer AS shard
        FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
       WHERE NOT i.inhdetachpending
    )
    SELECT s.relname AS table_name,
           array_agg(DISTINCT l.shard ORDER BY l.shard) AS missing,
           array_remove(array_agg(DISTINCT l.tenant::text), NULL) AS tenants
      FROM sharded s CROSS JOIN live l
     WHERE NOT EXISTS (SELECT 1 FROM covered c WHERE c.parent = s.oid AND c.shard = l.shard)
     GROUP BY s.relname
     ORDER BY s.relname`)
  return rows.map((r) => {
    const plural = (n: number): string => n === 1 ? '' : 's'
    const shards = r.missing.length > 8
      ? `${r.missing.slice(0, 8).join(', ')} and ${r.missing.length - 8} more`
      : r.missing.join(', ')
    const tenants = r.tenants.length > 0 ? ` (dedicated to ${r.tenants.length} tenant${plural(r.tenants.length)})` : ''
    return `sharded table ${r.table_name} has no partition for shard${plural(r.missing.length)} ${shards}${tenants}: ` +
      'rows of those tenants cannot be stored; run SELECT create_missing_shard_partitions() ' +
      '(a migration that adds a sharded table must end with it)'
  })
}

/** checkShardPartitions over a connection of its own; throws UnsafeDatabaseError listing the findings. */
export async function assertShardPartitions (ownerDatabaseUrl: string, tls: DatabaseTls = PLAINTEXT): Promise<void> {
  const client = new pg.Client({ ...connectionOptions(ownerDatabaseUrl, tls), application_name: 'rowfence-check' })
  await client.connect()
  try {
    const problems = await checkShardPartitions(client)
    if (problems.length > 0) throw new UnsafeDatabaseError(problems)
  } finally {
    await client.end()
  }
}
