// Shared by the benchmark's entry points (scripts/bench.ts, scripts/bench-load.ts): the dataset's
// deterministic ids and keys, and its seeding. The SQL the server sends per request, for pgbench, is
// in scripts/lib/bench-sql.ts.
import { createHash } from 'node:crypto'
import pg from 'pg'
import { formatApiKey } from '../../src/auth/api-keys.ts'

// Ids are derived from the tenant number t and the invoice number j, in TypeScript for the HTTP load
// and in SQL for pgbench (which has only numeric variables).
const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0')
export const tenantUuid = (t: number): string => `${hex(t, 8)}-0000-7000-8000-000000000000`
export const keyUuid = (t: number): string => `${hex(t, 8)}-0000-7000-9000-000000000000`
export const customerUuid = (t: number): string => `${hex(t, 8)}-0000-7000-a000-000000000000`
export const invoiceUuid = (t: number, j: number): string => `${hex(t, 8)}-0000-7000-b000-${hex(j, 12)}`

/** The benchmark's key for tenant t: deterministic, so a reused dataset needs no stored secrets. */
export function benchKey (t: number): ReturnType<typeof formatApiKey> {
  return formatApiKey(keyUuid(t), tenantUuid(t), createHash('sha256').update(`rowfence-bench-key-${t}`).digest())
}

export const LINE = { description: 'benchmark item', quantity: 3, unit_amount_cents: 100 }

/**
 * The forged-key scenario: a key with a valid checksum naming tenant 1 and a key id that does not
 * exist, sent with a body just under the 1 MB limit (300,000 empty invoice lines). What it may cost the
 * server is bounded; the benchmark reports the server's peak RSS while it runs.
 */
export const FORGED_KEY = formatApiKey(`${hex(0xffffffff, 8)}-0000-7000-9000-000000000000`, tenantUuid(1),
  createHash('sha256').update('rowfence-bench-forged').digest())
export const HUGE_LINES = 300_000
export const hugeBody = (): string =>
  `{"customer_id":"${customerUuid(1)}","currency":"EUR","lines":[${Array(HUGE_LINES).fill('{}').join(',')}]}`

/**
 * Seeds tenants 1..tenants with `invoices` invoices of 3 lines each; skips what a previous run seeded.
 * `url` is a superuser on the benchmark database: the bulk rows are written with triggers off
 * (session_replication_role = replica: no per-row foreign key checks, and the shard given rather than
 * looked up per row) — the data are generated consistent, and 1,000 × 10,000 invoices would otherwise
 * take hours to write.
 */
export async function seed (
  url: string,
  tenants: number,
  invoices: number,
  log: (line: string) => void
): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query('CREATE TABLE IF NOT EXISTS bench_seeded (t integer PRIMARY KEY, invoices integer NOT NULL)')
    const seededBefore = await client.query<{ t: number }>('SELECT t FROM bench_seeded WHERE invoices = $1', [invoices])
    const done = new Set(seededBefore.rows.map((r) => r.t))
    let seeded = 0
    for (let t = 1; t <= tenants; t++) {
      if (done.has(t)) continue
      const key = benchKey(t)
      await client.query('BEGIN')
      await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenantUuid(t)])
      await client.query(
        'INSERT INTO tenants (id, name, slug, shard) VALUES ($1, $2, $3, pooled_shard_for($1)) ON CONFLICT DO NOTHING',
        [tenantUuid(t), `Bench ${t}`, `bench-${t}`])
      await client.query(`INSERT INTO api_keys (id, name, prefix, secret_hash, scopes)
                          VALUES ($1, 'bench', $2, $3, '{read,write,admin}')
                          ON CONFLICT DO NOTHING`, [key.id, key.prefix, key.secretHash])
      await client.query("INSERT INTO customers (id, name) VALUES ($1, 'Bench customer') ON CONFLICT DO NOTHING",
        [customerUuid(t)])
      await client.query('SET LOCAL session_replication_role = replica')
      // Replica mode skips the triggers, so the lines the database keeps on each invoice (sql/0014)
      // are written here, as the trigger would write them for these three lines.
      await client.query(`INSERT INTO invoices (tenant_id, shard, id, customer_id, currency, amount_cents, lines)
        SELECT $4::uuid, pooled_shard_for($4::uuid),
               ((lpad(to_hex($1::int), 8, '0') || '-0000-7000-b000-' || lpad(to_hex(j), 12, '0')))::uuid,
               $2, 'EUR', 900,
               (SELECT array_to_json(array_agg(x))
                  FROM (SELECT $5::text AS description, 3 AS quantity, 100::bigint AS unit_amount_cents,
                               300::bigint AS amount_cents
                          FROM generate_series(1, 3)) x)
          FROM generate_series(1, $3) j
        ON CONFLICT DO NOTHING`, [t, customerUuid(t), invoices, tenantUuid(t), LINE.description])
      await client.query(`INSERT INTO invoice_lines
          (tenant_id, shard, invoice_id, position, description, quantity, unit_amount_cents, amount_cents)
        SELECT $4::uuid, pooled_shard_for($4::uuid),
               ((lpad(to_hex($1::int), 8, '0') || '-0000-7000-b000-' || lpad(to_hex(j), 12, '0')))::uuid,
               p, $3, 3, 100, 300
          FROM generate_series(1, $2) j, generate_series(1, 3) p
        ON CONFLICT DO NOTHING`, [t, invoices, LINE.description, tenantUuid(t)])
      await client.query(
        'INSERT INTO bench_seeded (t, invoices) VALUES ($1, $2) ON CONFLICT (t) DO UPDATE SET invoices = $2',
        [t, invoices])
      await client.query('COMMIT')
      seeded++
      if (seeded % 50 === 0) log(`seeded ${seeded} tenants`)
    }
    if (seeded > 0) {
      // VACUUM as well as ANALYZE: freshly loaded pages carry no hint bits or visibility map, so the
      // first runs would pay for setting them (and autovacuum would arrive mid-measurement).
      log('vacuuming and analyzing')
      await client.query('VACUUM (ANALYZE)')
    }
  } finally {
    await client.end()
  }
}

export type Scenario = 'healthz' | 'get-invoice' | 'list-invoices' | 'create-invoice' | 'forged-key-huge-body'

/** Which benchmark tenants (1..n) live in which pooled shard, as the database computes it. */
export async function tenantsByShard (url: string, tenants: number): Promise<Map<number, number[]>> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const { rows } = await client.query<{ t: number, shard: number }>(`
      SELECT t, pooled_shard_for((lpad(to_hex(t), 8, '0') || '-0000-7000-8000-000000000000')::uuid) AS shard
        FROM generate_series(1, $1::int) t`, [tenants])
    const byShard = new Map<number, number[]>()
    for (const row of rows) byShard.set(row.shard, [...(byShard.get(row.shard) ?? []), row.t])
    return byShard
  } finally {
    await client.end()
  }
}
