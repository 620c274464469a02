import t from 'tap'
import pg from 'pg'
import { runSafetyChecks, UnsafeDatabaseError } from '../../src/ops/safety-checks.ts'
import { assertSafeDatabase } from '../../src/main.ts'
import { createRole, createTestDatabase, query, type TestDatabase } from '../helpers/db.ts'

async function report (url: string): Promise<Awaited<ReturnType<typeof runSafetyChecks>>> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await runSafetyChecks(client)
  } finally {
    await client.end()
  }
}

/** A runtime role with the same grants as `app`, plus whatever attributes the attack needs. */
async function roleLikeApp (
  t: Parameters<typeof createRole>[0],
  db: TestDatabase,
  attributes: string
): Promise<string> {
  const url = await createRole(t, db, attributes)
  const role = decodeURIComponent(new URL(url).username)
  await query(db.adminUrl, `GRANT app TO ${role}`)
  return url
}

t.test('the migrated schema passes every check as the runtime role', async (t) => {
  const db = await createTestDatabase(t)
  const result = await report(db.appUrl)
  t.same(result.problems, [])
  t.equal(result.role, 'app')
  t.ok(result.tenantTables >= 3, 'tenants, api_keys and customers are recognised as tenant tables')
  await t.resolves(assertSafeDatabase(db.appUrl))
})

t.test('a superuser runtime role is refused', async (t) => {
  const db = await createTestDatabase(t)
  const url = await createRole(t, db, 'SUPERUSER')
  const error = await assertSafeDatabase(url).then(() => undefined, (e: unknown) => e)
  t.type(error, UnsafeDatabaseError)
  t.match((error as Error).message, /is a superuser/)
})

t.test('a BYPASSRLS runtime role is refused', async (t) => {
  const db = await createTestDatabase(t)
  const url = await roleLikeApp(t, db, 'BYPASSRLS')
  const result = await report(url)
  t.notOk(result.ok)
  t.match(result.problems.join('\n'), /has BYPASSRLS/)
})

t.test('a runtime role that inherits BYPASSRLS through a membership is refused', async (t) => {
  const db = await createTestDatabase(t)
  const bypassUrl = await createRole(t, db, 'BYPASSRLS')
  const bypassRole = decodeURIComponent(new URL(bypassUrl).username)
  const url = await roleLikeApp(t, db, '')
  await query(db.adminUrl, `GRANT ${bypassRole} TO ${decodeURIComponent(new URL(url).username)}`)
  const result = await report(url)
  t.match(result.problems.join('\n'), new RegExp(`member of ${bypassRole}`))
})

t.test('a runtime role that reaches a CREATEDB or SUPERUSER role through other roles is refused', async (t) => {
  const db = await createTestDatabase(t)
  const name = (url: string): string => decodeURIComponent(new URL(url).username)
  const url = await roleLikeApp(t, db, '')
  const [middle, createdb, superuser] = [
    name(await createRole(t, db, '')),
    name(await createRole(t, db, 'CREATEDB')),
    name(await createRole(t, db, 'SUPERUSER')),
  ]
  await query(db.adminUrl, `GRANT ${middle} TO ${name(url)}; GRANT ${createdb} TO ${middle}`)
  const problems = (await report(url)).problems.join('\n')
  t.match(problems, `is a member of ${createdb} (through ${middle}), which has CREATEDB`)
  await query(db.adminUrl, `REVOKE ${createdb} FROM ${middle}; GRANT ${superuser} TO ${middle}`)
  const second = (await report(url)).problems.join('\n')
  t.match(second, `is a member of ${superuser} (through ${middle}), which has SUPERUSER`)
  t.notMatch(second, new RegExp(createdb), 'a revoked membership no longer counts')
  await query(db.adminUrl, `REVOKE ${superuser} FROM ${middle}`)
  t.same((await report(url)).problems, [], 'a plain chain of memberships is fine')
})

t.test('a table privilege outside the allow-list is refused, however the runtime role holds it', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'GRANT DELETE ON api_keys TO app; GRANT UPDATE (secret_hash, scopes) ON api_keys TO app; ' +
    'GRANT SELECT ON erasure_receipts TO PUBLIC')
  const problems = (await report(db.appUrl)).problems
  t.same(problems.filter((p) => /allow-list/.test(p)).sort(), [
    'runtime role app holds DELETE on api_keys, which is not in its allow-list (RUNTIME_PRIVILEGES)',
    'runtime role app holds SELECT on erasure_receipts, which is not in its allow-list (RUNTIME_PRIVILEGES)',
    'runtime role app holds UPDATE (secret_hash, scopes) on api_keys, ' +
      'which is not in its allow-list (RUNTIME_PRIVILEGES)',
  ], 'a direct grant, a column grant and a grant to PUBLIC')
  await query(db.ownerUrl, 'REVOKE DELETE, UPDATE (secret_hash, scopes) ON api_keys FROM app; ' +
    'REVOKE SELECT ON erasure_receipts FROM PUBLIC')
  t.same((await report(db.appUrl)).problems, [], 'once revoked, the schema passes again')

  // Through a role the runtime role belongs to.
  const name = (url: string): string => decodeURIComponent(new URL(url).username)
  const runtime = await roleLikeApp(t, db, '')
  const writer = name(await createRole(t, db, ''))
  await query(db.ownerUrl, `GRANT UPDATE ON tenants TO ${writer}`)
  await query(db.adminUrl, `GRANT ${writer} TO ${name(runtime)}`)
  t.match((await report(runtime)).problems,
    ['runtime role ' + name(runtime) + ' holds UPDATE on tenants, which is not in its allow-list (RUNTIME_PRIVILEGES)'])
})

t.test("the job queue's tables: the runtime role may take and finish jobs, never add one directly", async (t) => {
  const db = await createTestDatabase(t)
  t.same((await report(db.appUrl)).problems, [], 'the grants of sql/0019 pass')
  await query(db.ownerUrl, 'GRANT INSERT ON graphile_worker._private_jobs TO app; ' +
    'GRANT DELETE ON worker_heartbeats, webhook_attempts TO app')
  t.same((await report(db.appUrl)).problems.sort(), [
    'runtime role app holds DELETE on webhook_attempts, which is not in its allow-list (RUNTIME_PRIVILEGES)',
    'runtime role app holds INSERT on graphile_worker._private_jobs, which is not in its allow-list ' +
      '(RUNTIME_PRIVILEGES)',
  ], 'inserting jobs (bypassing enqueue_tenant_job) or erasing delivery history is refused')
  await query(db.ownerUrl, 'CREATE FUNCTION enqueue_anything(p json) RETURNS void LANGUAGE sql SECURITY DEFINER ' +
    "SET search_path = pg_catalog AS $$ SELECT graphile_worker.add_job('deliver_webhook', p) $$")
  t.match((await report(db.appUrl)).problems.join('\n'), /SECURITY DEFINER function enqueue_anything\(json\)/,
    'and so is any other door into the queue')
})

t.test('the database owner as runtime role is refused (it owns every table)', async (t) => {
  const db = await createTestDatabase(t)
  const result = await report(db.ownerUrl)
  t.notOk(result.ok)
  t.match(result.problems.join('\n'), /owns table customers/)
  t.match(result.problems.join('\n'), /owns the database/)
})

t.test('a table whose FORCE ROW LEVEL SECURITY was removed is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'ALTER TABLE customers NO FORCE ROW LEVEL SECURITY')
  const result = await report(db.appUrl)
  t.same(result.problems, ['table customers does not FORCE ROW LEVEL SECURITY'])
})

t.test('a table with RLS disabled is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'ALTER TABLE api_keys DISABLE ROW LEVEL SECURITY')
  t.match((await report(db.appUrl)).problems, ['table api_keys does not ENABLE ROW LEVEL SECURITY'])
})

t.test('a new tenant table without a policy is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, `CREATE TABLE notes (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY; ALTER TABLE notes FORCE ROW LEVEL SECURITY;
    GRANT SELECT ON notes TO app`)
  t.same((await report(db.appUrl)).problems, [
    'table notes has no row-level security policy for the runtime role',
    'runtime role app holds SELECT on notes, which is not in its allow-list (RUNTIME_PRIVILEGES)',
  ])
})

t.test('a permissive policy that lets rows through is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'CREATE POLICY debug_all ON customers FOR SELECT USING (true)')
  t.match((await report(db.appUrl)).problems.join('\n'), /policy debug_all has USING true/)
})

t.test('a policy without WITH CHECK on the tenant is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, `DROP POLICY tenant_isolation ON customers;
    CREATE POLICY tenant_isolation ON customers USING (tenant_id = current_tenant_id()) WITH CHECK (true)`)
  t.match((await report(db.appUrl)).problems.join('\n'), /customers: policy tenant_isolation has WITH CHECK true/)
})

t.test('TRUNCATE or REFERENCES granted to the runtime role is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'GRANT TRUNCATE, REFERENCES ON customers TO app')
  const problems = (await report(db.appUrl)).problems.join('\n')
  t.match(problems, /TRUNCATE on customers/)
  t.match(problems, /REFERENCES on customers/)
})

t.test('a view that is not security_invoker is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'CREATE VIEW all_customers AS SELECT * FROM customers; GRANT SELECT ON all_customers TO app')
  t.match((await report(db.appUrl)).problems.join('\n'), /view all_customers is not security_invoker/)
  await query(db.ownerUrl, 'ALTER VIEW all_customers SET (security_invoker = true)')
  t.same((await report(db.appUrl)).problems,
    ['runtime role app holds SELECT on all_customers, which is not in its allow-list (RUNTIME_PRIVILEGES)'],
    'a security_invoker view is accepted (its grant still has to be in the allow-list)')
})

t.test('an unexpected SECURITY DEFINER function the runtime role can call is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, `CREATE FUNCTION all_customer_names() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER
    SET search_path = public AS $$ SELECT name FROM customers $$`)
  t.match((await report(db.appUrl)).problems.join('\n'), /may execute SECURITY DEFINER function all_customer_names\(\)/)
  await query(db.ownerUrl, 'REVOKE EXECUTE ON FUNCTION all_customer_names() FROM PUBLIC')
  t.same((await report(db.appUrl)).problems, [], 'one the runtime role cannot execute is fine')
})

t.test('a unique key or foreign key of a tenant table without tenant_id is refused', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email)')
  await query(db.ownerUrl, 'CREATE UNIQUE INDEX customers_ref_idx ON customers (external_ref)')
  const problems = (await report(db.appUrl)).problems.join('\n')
  t.match(problems, /table customers: unique constraint customers_email_key does not include tenant_id/)
  t.match(problems, /table customers: unique index customers_ref_idx does not include tenant_id/)
})

t.test('a foreign key that matches tenant_id with another column of the referenced table is refused', async (t) => {
  const db = await createTestDatabase(t)
  const notes = (name: string, references: string) => `CREATE TABLE ${name} (
      tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id), id uuid NOT NULL,
      customer_id uuid NOT NULL, PRIMARY KEY (tenant_id, id),
      CONSTRAINT ${name}_customer_fkey FOREIGN KEY (tenant_id, customer_id) REFERENCES customers ${references});
    ALTER TABLE ${name} ENABLE ROW LEVEL SECURITY; ALTER TABLE ${name} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON ${name} USING (tenant_id = current_tenant_id())
      WITH CHECK (tenant_id = current_tenant_id())`
  // Includes tenant_id, yet a note's customer_id is compared with customers.tenant_id: it can name
  // another tenant's customer.
  await query(db.ownerUrl, notes('crossed_notes', '(id, tenant_id)'))
  await query(db.ownerUrl, notes('notes', '(tenant_id, id)'))
  t.same((await report(db.appUrl)).problems, [
    'table crossed_notes: foreign key crossed_notes_customer_fkey matches tenant_id with customers.id, ' +
      'not with the referenced tenant (a reference could point into another tenant)',
  ], 'the same key with the columns in order is accepted')
  // A partitioned referenced table (one constraint row per partition) is reported once, by its own name.
  await query(db.ownerUrl, `DROP TABLE crossed_notes;
    ALTER TABLE notes ADD COLUMN invoice_id uuid, ADD COLUMN shard integer,
      ADD CONSTRAINT notes_invoice_fkey FOREIGN KEY (tenant_id, invoice_id, shard)
        REFERENCES invoices (id, tenant_id, shard)`)
  t.same((await report(db.appUrl)).problems, [
    'table notes: foreign key notes_invoice_fkey matches tenant_id with invoices.id, ' +
      'not with the referenced tenant (a reference could point into another tenant)',
  ])
})

t.test('a current_tenant_id() that is not fail-closed is refused', async (t) => {
  const db = await createTestDatabase(t)
  // The naive version: ''::uuid raises once a transaction-local setting has ended.
  await query(db.ownerUrl, `CREATE OR REPLACE FUNCTION current_tenant_id() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.current_tenant_id', true)::uuid $$`)
  t.match((await report(db.appUrl)).problems.join('\n'), /not fail-closed/)
})

t.test('current_tenant_id() is NULL, not an error, once a transaction-local binding has ended', async (t) => {
  const db = await createTestDatabase(t)
  const client = new pg.Client({ connectionString: db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', '0190a6d2-0000-7000-8000-000000000000', true)")
  await client.query('COMMIT')
  const setting = await client.query("SELECT current_setting('app.current_tenant_id', true) AS s")
  t.equal(setting.rows[0].s, '', 'PostgreSQL leaves an empty string behind')
  const after = await client.query('SELECT current_tenant_id() AS t, (SELECT count(*)::int FROM customers) AS n')
  t.same(after.rows[0], { t: null, n: 0 })
})

t.test('the tenant policy is an index condition on tenant_id', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.adminUrl, `INSERT INTO tenants (id, name, slug, shard)
    SELECT id, 'T' || i, 'tenant-' || i, pooled_shard_for(id)
      FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, 200) i) g;
    INSERT INTO customers (tenant_id, id, name)
      SELECT t.id, gen_random_uuid(), 'c' FROM tenants t, generate_series(1, 50);
    ANALYZE customers`)
  const [tenant] = await query<{ id: string }>(db.adminUrl, 'SELECT id FROM tenants LIMIT 1')
  const client = new pg.Client({ connectionString: db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant!.id])
  const plan = await client.query('EXPLAIN (FORMAT JSON) SELECT * FROM customers ORDER BY id DESC LIMIT 50')
  const text = JSON.stringify(plan.rows[0]['QUERY PLAN'])
  t.match(text, /Index (Only )?Scan/, 'an index scan, not a sequential scan')
  t.match(text, /"Index Cond":"\(tenant_id = /, 'the policy predicate is the index condition')
  t.notMatch(text, /Seq Scan/)
  await client.query('ROLLBACK')
})
