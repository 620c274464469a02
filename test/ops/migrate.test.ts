import { mkdtemp, readFile, writeFile, copyFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { migrate, MigrationError, SQL_DIR } from '../../src/ops/migrate.ts'
import { createTestDatabase, query } from '../helpers/db.ts'

/** A copy of sql/ the test may edit. */
async function sqlCopy (): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-sql-'))
  for (const file of await readdir(SQL_DIR)) await copyFile(path.join(SQL_DIR, file), path.join(dir, file))
  return dir
}

t.test('an up-to-date database applies nothing and keeps its ledger', async (t) => {
  const db = await createTestDatabase(t)
  const result = await migrate(db.ownerUrl)
  t.same(result.applied, [])
  const ledger = await query<{ name: string }>(db.ownerUrl, 'SELECT name FROM schema_migrations ORDER BY version')
  t.same(ledger.map((r) => r.name), (await readdir(SQL_DIR)).filter((f) => f.endsWith('.sql')).sort())
})

t.test('an applied migration that was edited is refused with a clear message', async (t) => {
  const db = await createTestDatabase(t)
  const dir = await sqlCopy()
  const file = path.join(dir, '0002_customers.sql')
  await writeFile(file, (await readFile(file, 'utf8')) + '\n-- an innocent edit\n')
  const error = await migrate(db.ownerUrl, { dir }).then(() => undefined, (e: unknown) => e)
  t.type(error, MigrationError)
  t.match((error as Error).message, /sql\/0002_customers\.sql was edited after it was applied/)
})

t.test('a failing migration is rolled back entirely and stops the run', async (t) => {
  const db = await createTestDatabase(t)
  const dir = await sqlCopy()
  await writeFile(path.join(dir, '9001_half.sql'), 'CREATE TABLE half_done (x int);\nSELECT 1/0;\n')
  await writeFile(path.join(dir, '9002_later.sql'), 'CREATE TABLE later (x int);\n')
  await t.rejects(migrate(db.ownerUrl, { dir }),
    { name: 'MigrationError', message: /9001_half\.sql failed and was rolled back: division by zero/ })
  const tables = await query(db.ownerUrl, "SELECT relname FROM pg_class WHERE relname IN ('half_done', 'later')")
  t.same(tables, [], 'neither the failed file nor the next one left anything behind')
  const ledger = await query(db.ownerUrl, "SELECT 1 FROM schema_migrations WHERE version >= '9001'")
  t.same(ledger, [])
})

t.test('two migrators at once apply each file exactly once', async (t) => {
  const db = await createTestDatabase(t)
  const dir = await sqlCopy()
  // Slow enough that the second migrator really waits on the advisory lock.
  await writeFile(path.join(dir, '9001_slow.sql'), 'SELECT pg_sleep(0.3);\nCREATE TABLE slow_once (x int);\n')
  const results = await Promise.all([migrate(db.ownerUrl, { dir }), migrate(db.ownerUrl, { dir })])
  t.same(results.map((r) => r.applied).flat(), ['9001_slow.sql'], 'one of them applied it, the other found it done')
  const ledger = await query(db.ownerUrl, "SELECT 1 FROM schema_migrations WHERE version = '9001'")
  t.equal(ledger.length, 1)
})

t.test('a badly named file is refused before anything runs', async (t) => {
  const db = await createTestDatabase(t)
  const dir = await sqlCopy()
  await writeFile(path.join(dir, 'add-stuff.sql'), 'CREATE TABLE stuff (x int);')
  await t.rejects(migrate(db.ownerUrl, { dir }), /must be named NNNN_lower_snake_name\.sql/)
})

t.test('0007 turns the large tables into sharded ones and keeps every row and the audit chain', async (t) => {
  const db = await createTestDatabase(t, { empty: true })
  const dir = await sqlCopy()
  for (const file of await readdir(dir)) if (file >= '0007') await rm(path.join(dir, file))
  await migrate(db.ownerUrl, { dir })
  const tenant = '0190a6d2-0000-7000-8000-00000000000a'
  // Data written under the 0006 schema, as the runtime role would.
  await query(db.appUrl, 'SELECT 1') // the runtime role can connect
  await query(db.ownerUrl, `BEGIN;
    SELECT set_config('app.current_tenant_id', '${tenant}', true);
    INSERT INTO tenants (id, name, slug) VALUES ('${tenant}', 'Old', 'old');
    INSERT INTO customers (id, name) VALUES ('0190a6d2-0000-7000-8000-0000000000c1', 'C');
    INSERT INTO invoices (id, customer_id, currency, amount_cents)
      VALUES ('0190a6d2-0000-7000-8000-0000000000e1', '0190a6d2-0000-7000-8000-0000000000c1', 'EUR', 10);
    INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents)
      VALUES ('0190a6d2-0000-7000-8000-0000000000e1', 1, 'x', 2, 5, 10);
    INSERT INTO audit_events (id, actor_type, actor_id, action, resource_type, resource_id) VALUES
      ('0190a6d2-0000-7000-8000-0000000000a1', 'system', 's', 'one', 'x', 'x'),
      ('0190a6d2-0000-7000-8000-0000000000a2', 'system', 's', 'two', 'x', 'x');
    COMMIT`)
  const result = await migrate(db.ownerUrl)
  t.ok(result.applied.includes('0007_placement.sql'))
  const [after] = await query<{
    kind: string, invoices: number, lines: number, events: number, shard: number, broken: number,
  }>(db.ownerUrl, `BEGIN;
    SELECT set_config('app.current_tenant_id', '${tenant}', true);
    SELECT (SELECT relkind::text FROM pg_class WHERE relname = 'invoices') AS kind,
           (SELECT count(*)::int FROM invoices) AS invoices, (SELECT count(*)::int FROM invoice_lines) AS lines,
           (SELECT count(*)::int FROM audit_events) AS events, (SELECT shard FROM tenants) AS shard,
           (SELECT count(*)::int FROM audit_events e WHERE e.hash <> audit_event_hash(e.prev_hash, e)) AS broken;
    COMMIT`)
  t.match(after, { kind: 'p', invoices: 1, lines: 1, events: 2, broken: 0 })
  t.ok(after!.shard >= 0 && after!.shard < 16, 'existing tenants are pooled')
})
