import t from 'tap'
import pg from 'pg'
import { runSafetyChecks } from '../../src/db/safety-checks.ts'
import { as, buildTestApp, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t)
const admin = (c: TestApp) => ({ authorization: `Bearer ${c.adminToken}` })

async function onboard (c: TestApp, slug: string, placement?: string): Promise<{ id: string, key: string, placement: string }> {
  const res = await c.app.inject({ method: 'POST', url: '/admin/v1/tenants', headers: admin(c), payload: { name: slug, slug, ...(placement !== undefined && { placement }) } })
  if (res.statusCode !== 201) throw new Error(res.body)
  const body = res.json<{ tenant: { id: string, placement: string }, api_key: { key: string } }>()
  return { id: body.tenant.id, key: body.api_key.key, placement: body.tenant.placement }
}

const partitionsOf = async (shard: number): Promise<string[]> =>
  (await query<{ relname: string }>(ctx.db.adminUrl, "SELECT relname FROM pg_class WHERE relname ~ ('_s' || $1 || '$') AND relispartition ORDER BY 1", [shard])).map((r) => r.relname)
const shardOf = async (id: string): Promise<number> => (await query<{ shard: number }>(ctx.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1', [id]))[0]!.shard

async function workload (tenant: { key: string }): Promise<string> {
  const c = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Buyer' } }))
  const inv = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload: { customer_id: c.json<{ id: string }>().id, currency: 'EUR', lines: [{ description: 'x', quantity: 2, unit_amount_cents: 50 }] } }))
  const id = inv.json<{ id: string }>().id
  await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${id}/finalize` }))
  return id
}

t.test('pooled onboarding (the default) creates no partition', async (t) => {
  const before = (await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length
  const tenant = await onboard(ctx, 'pooled-one')
  t.equal(tenant.placement, 'pooled')
  t.ok(await shardOf(tenant.id) < 16)
  t.equal((await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length, before)
  await workload(tenant)
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices' }))).json<{ data: unknown[] }>().data.length, 1)
})

t.test('dedicated onboarding creates the tenant\'s partitions of every sharded table, protected like their parents', async (t) => {
  const tenant = await onboard(ctx, 'dedicated-one', 'dedicated')
  const shard = await shardOf(tenant.id)
  t.ok(shard >= 1000)
  t.same(await partitionsOf(shard), [`audit_events_s${shard}`, `invoice_lines_s${shard}`, `invoices_s${shard}`])
  const protection = await query<{ relname: string, relrowsecurity: boolean, relforcerowsecurity: boolean, policies: number, constraints: number }>(ctx.db.adminUrl, `
    SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
           (SELECT count(*)::int FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,
           (SELECT count(*)::int FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('p', 'f', 'u')) AS constraints
      FROM pg_class c WHERE c.relname = ANY ($1) ORDER BY 1`, [await partitionsOf(shard)])
  for (const p of protection) {
    t.match(p, { relrowsecurity: true, relforcerowsecurity: true, policies: 1 }, p.relname)
    t.ok(p.constraints >= 2, `${p.relname} has its keys and foreign keys`)
  }
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  await t.rejects(client.query(`SELECT * FROM invoices_s${shard}`), { code: '42501' }, 'the runtime role cannot address a partition directly')
  t.same((await runSafetyChecks(client)).problems, [], 'the safety checks hold with the new partitions')
  const invoiceId = await workload(tenant)
  const [row] = await query<{ tableoid: string }>(ctx.db.adminUrl, 'SELECT tableoid::regclass::text FROM invoices WHERE id = $1', [invoiceId])
  t.equal(row?.tableoid, `invoices_s${shard}`, 'its rows live in its own partition')
})

t.test('a failed dedicated onboarding leaves no partition behind', async (t) => {
  await onboard(ctx, 'taken-slug')
  const before = (await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length
  const res = await ctx.app.inject({ method: 'POST', url: '/admin/v1/tenants', headers: admin(ctx), payload: { name: 'x', slug: 'taken-slug', placement: 'dedicated' } })
  t.equal(res.statusCode, 409)
  t.equal((await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length, before)
})

t.test('a new sharded table needs nothing but its CREATE TABLE', async (t) => {
  const own = await buildTestApp(t)
  await query(own.db.ownerUrl, `CREATE TABLE usage_events (
      tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id), id uuid NOT NULL,
      shard integer NOT NULL DEFAULT tenant_shard(), PRIMARY KEY (tenant_id, id, shard)) PARTITION BY LIST (shard);
    ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY; ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON usage_events USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
    DO $$ BEGIN FOR s IN 0 .. 15 LOOP PERFORM create_shard_partitions(s); END LOOP; END $$`)
  const res = await own.app.inject({ method: 'POST', url: '/admin/v1/tenants', headers: admin(own), payload: { name: 'u', slug: 'usage', placement: 'dedicated' } })
  const id = res.json<{ tenant: { id: string } }>().tenant.id
  const [{ shard }] = await query<{ shard: number }>(own.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1', [id]) as [{ shard: number }]
  const [part] = await query<{ relforcerowsecurity: boolean }>(own.db.adminUrl, 'SELECT relforcerowsecurity FROM pg_class WHERE relname = $1', [`usage_events_s${shard}`])
  t.equal(part?.relforcerowsecurity, true, 'its dedicated partition was created and protected')
})

t.test('placement can change later, both ways, keeping every row and the audit chain', async (t) => {
  const tenant = await onboard(ctx, 'mover')
  const invoiceId = await workload(tenant)
  const before = (await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body
  const pooledShard = await shardOf(tenant.id)

  const toDedicated = await ctx.app.inject({ method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/placement`, headers: admin(ctx), payload: { placement: 'dedicated' } })
  t.equal(toDedicated.statusCode, 200)
  t.match(toDedicated.json(), { tenant: { placement: 'dedicated' }, rows_moved: { invoices: 1, invoice_lines: 1, audit_events: 4 } })
  const dedicatedShard = await shardOf(tenant.id)
  t.ok(dedicatedShard >= 1000)
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body, before, 'the invoice reads the same')
  const [row] = await query<{ tableoid: string }>(ctx.db.adminUrl, 'SELECT tableoid::regclass::text FROM invoices WHERE id = $1', [invoiceId])
  t.equal(row?.tableoid, `invoices_s${dedicatedShard}`)

  const back = await ctx.app.inject({ method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/placement`, headers: admin(ctx), payload: { placement: 'pooled' } })
  t.match(back.json(), { tenant: { placement: 'pooled' } })
  t.equal(await shardOf(tenant.id), pooledShard)
  t.same(await partitionsOf(dedicatedShard), [], 'the emptied dedicated partitions are dropped')
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body, before)
  const verify = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))
  t.match(verify.json(), { ok: true })
  t.equal((await ctx.app.inject({ method: 'PUT', url: '/admin/v1/tenants/0190a6d2-0000-7000-8000-000000000000/placement', headers: admin(ctx), payload: { placement: 'pooled' } })).statusCode, 404)
})

t.test("requests made during a placement move wait for it and see the tenant's data", async (t) => {
  const tenant = await onboard(ctx, 'busy-mover')
  const invoiceId = await workload(tenant)
  const reads = Array.from({ length: 20 }, () => ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` })))
  const move = ctx.app.inject({ method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/placement`, headers: admin(ctx), payload: { placement: 'dedicated' } })
  const more = Array.from({ length: 20 }, () => ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` })))
  const results = await Promise.all([...reads, ...more])
  t.equal((await move).statusCode, 200)
  t.same([...new Set(results.map((r) => r.statusCode))], [200], 'no read missed the invoice')
})
