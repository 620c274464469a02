import t from 'tap'
import pg from 'pg'
import { OPERATION_LOCK_SALT } from '../../src/tenancy/operation-lock.ts'
import { runSafetyChecks } from '../../src/ops/safety-checks.ts'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import {
  holdTransaction, onboard as onboardAs, partitionsOf as partitionsIn, shardOf, someoneWaits, timed, waitUntil,
} from '../helpers/operator.ts'

const ctx = await buildTestApp(t)
const admin = (c: TestApp) => ({ authorization: `Bearer ${c.adminToken}` })

const onboard = async (c: TestApp, slug: string, placement?: 'pooled' | 'dedicated') => onboardAs(c, slug, placement)

const partitionsOf = async (shard: number): Promise<string[]> => partitionsIn(ctx, shard)

/**
 * Everything that protects a table, in a form that compares equal between a partition and its
 * parent: RLS flags, policies, constraints (keys, checks, foreign keys) and indexes by definition,
 * row triggers by name and function. The parent's constraints that PostgreSQL derives for each
 * partition of a referenced table are left out (they belong to the partitions, not the declaration).
 */
async function protectionOf (table: string): Promise<Record<string, unknown>> {
  const [flags] = await query<{ rls: boolean, force: boolean }>(ctx.db.adminUrl,
    'SELECT relrowsecurity AS rls, relforcerowsecurity AS force FROM pg_class WHERE oid = $1::regclass', [table])
  const policies = await query(ctx.db.adminUrl, `
    SELECT polname, polcmd::text, polpermissive, polroles::regrole[]::text[] AS roles,
           pg_get_expr(polqual, polrelid) AS using, pg_get_expr(polwithcheck, polrelid) AS check
      FROM pg_policy WHERE polrelid = $1::regclass ORDER BY polname`, [table])
  const constraints = (await query<{ kind: string, def: string }>(ctx.db.adminUrl, `
    SELECT contype::text AS kind, pg_get_constraintdef(oid) AS def FROM pg_constraint k
     WHERE conrelid = $1::regclass
       AND NOT (contype = 'f' AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = k.confrelid AND r.relispartition))
     ORDER BY 1, 2`, [table]))
  const indexes = (await query<{ def: string }>(ctx.db.adminUrl,
    'SELECT pg_get_indexdef(indexrelid) AS def FROM pg_index WHERE indrelid = $1::regclass', [table]))
    .map((r) => r.def.replace(/INDEX \S+ ON (ONLY )?\S+/, 'INDEX ON')).sort()
  const triggers = await query(ctx.db.adminUrl, `
    SELECT tgname, tgfoid::regproc::text AS fn, tgtype FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal
       AND tgtype & 1 = 1 ORDER BY 1`, [table]) // row-level: statement-level triggers (sql/0014) stay on the parent
  return { ...flags, policies, constraints, indexes, triggers }
}

async function workload (tenant: { key: string }): Promise<string> {
  const c = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Buyer' } }))
  const inv = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: c.json<{ id: string }>().id,
      currency: 'EUR',
      lines: [{ description: 'x', quantity: 2, unit_amount_cents: 50 }],
    },
  }))
  const id = inv.json<{ id: string }>().id
  await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${id}/finalize` }))
  return id
}

t.test('pooled onboarding (the default) creates no partition', async (t) => {
  const before = (await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length
  const tenant = await onboard(ctx, 'pooled-one')
  t.equal(tenant.placement, 'pooled')
  t.ok(await shardOf(ctx, tenant.id) < 16)
  t.equal((await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length, before)
  await workload(tenant)
  const listed = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices' }))
  t.equal(listed.json<{ data: unknown[] }>().data.length, 1)
})

t.test('dedicated onboarding creates the tenant\'s partitions of every sharded table, ' +
  'protected like their parents', async (t) => {
  const tenant = await onboard(ctx, 'dedicated-one', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  t.ok(shard >= 1000)
  t.same(await partitionsOf(shard),
    [`audit_events_s${shard}`, `events_s${shard}`, `invoice_lines_s${shard}`, `invoices_s${shard}`])
  for (const partition of await partitionsOf(shard)) {
    const parent = partition.replace(/_s\d+$/, '')
    t.same(await protectionOf(partition), await protectionOf(parent),
      `${partition} has exactly ${parent}'s keys, checks, foreign keys, indexes, triggers, RLS and policies`)
  }
  // The comparison notices what a partition lacks.
  await query(ctx.db.adminUrl, `DROP POLICY tenant_isolation ON invoices_s${shard};
    CREATE POLICY tenant_isolation ON invoices_s${shard} USING (true)`)
  t.not(JSON.stringify((await protectionOf(`invoices_s${shard}`)).policies),
    JSON.stringify((await protectionOf('invoices')).policies), 'a weakened policy shows')
  await query(ctx.db.adminUrl, `DROP POLICY tenant_isolation ON invoices_s${shard};
    CREATE POLICY tenant_isolation ON invoices_s${shard} USING (tenant_id = current_tenant_id())
      WITH CHECK (tenant_id = current_tenant_id())`)
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  // The runtime role reads partitions directly (the scoping plugin names them), under their own RLS:
  // with no tenant bound it sees nothing, bound to another tenant nothing of this one, and it can
  // write to none of them directly.
  await workload(tenant)
  t.equal((await client.query(`SELECT count(*)::int AS n FROM invoices_s${shard}`)).rows[0].n, 0,
    'no tenant bound: no rows of the partition')
  const stranger = await provisionTenant(ctx)
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [stranger.id])
  t.equal((await client.query(`SELECT count(*)::int AS n FROM invoices_s${shard}`)).rows[0].n, 0,
    "another tenant's binding: none of this tenant's rows")
  await client.query('ROLLBACK')
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  t.ok((await client.query(`SELECT count(*)::int AS n FROM invoices_s${shard}`)).rows[0].n > 0,
    'its own binding: its rows')
  await t.rejects(client.query(`UPDATE invoices_s${shard} SET memo = 'direct'`), { code: '42501' },
    'no direct write to a partition')
  await client.query('ROLLBACK')
  t.same((await runSafetyChecks(client)).problems, [], 'the safety checks hold with the new partitions')
  const invoiceId = await workload(tenant)
  const [row] = await query<{ tableoid: string }>(ctx.db.adminUrl,
    'SELECT tableoid::regclass::text FROM invoices WHERE id = $1', [invoiceId])
  t.equal(row?.tableoid, `invoices_s${shard}`, 'its rows live in its own partition')
})

t.test('a failed dedicated onboarding leaves no partition behind', async (t) => {
  await onboard(ctx, 'taken-slug')
  const before = (await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length
  const res = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: admin(ctx),
    payload: { name: 'x', slug: 'taken-slug', placement: 'dedicated' },
  })
  t.equal(res.statusCode, 409)
  t.equal((await query(ctx.db.adminUrl, 'SELECT 1 FROM pg_class WHERE relispartition')).length, before)
})

t.test('a new sharded table needs its CREATE TABLE and create_missing_shard_partitions(), ' +
  'and new dedicated tenants get its partitions', async (t) => {
  const own = await buildTestApp(t)
  await query(own.db.ownerUrl, `CREATE TABLE usage_events (
      tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id), id uuid NOT NULL,
      shard integer NOT NULL DEFAULT tenant_shard(), PRIMARY KEY (tenant_id, id, shard)) PARTITION BY LIST (shard);
    ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY; ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON usage_events USING (tenant_id = current_tenant_id())
      WITH CHECK (tenant_id = current_tenant_id());
    SELECT create_missing_shard_partitions()`)
  const res = await own.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: admin(own),
    payload: { name: 'u', slug: 'usage', placement: 'dedicated' },
  })
  const id = res.json<{ tenant: { id: string } }>().tenant.id
  const [{ shard }] = await query<{ shard: number }>(own.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1',
    [id]) as [{ shard: number }]
  const [part] = await query<{ relforcerowsecurity: boolean }>(own.db.adminUrl,
    'SELECT relforcerowsecurity FROM pg_class WHERE relname = $1', [`usage_events_s${shard}`])
  t.equal(part?.relforcerowsecurity, true, 'its dedicated partition was created and protected')
})

t.test('placement can change later, both ways, keeping every row and the audit chain', async (t) => {
  const tenant = await onboard(ctx, 'mover')
  const invoiceId = await workload(tenant)
  const before = (await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body
  const pooledShard = await shardOf(ctx, tenant.id)

  const toDedicated = await ctx.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/placement`,
    headers: admin(ctx),
    payload: { placement: 'dedicated' },
  })
  t.equal(toDedicated.statusCode, 200)
  t.match(toDedicated.json(),
    { tenant: { placement: 'dedicated' }, rows_moved: { invoices: 1, invoice_lines: 1, audit_events: 4 } })
  const dedicatedShard = await shardOf(ctx, tenant.id)
  t.ok(dedicatedShard >= 1000)
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body, before,
    'the invoice reads the same')
  const [row] = await query<{ tableoid: string }>(ctx.db.adminUrl,
    'SELECT tableoid::regclass::text FROM invoices WHERE id = $1', [invoiceId])
  t.equal(row?.tableoid, `invoices_s${dedicatedShard}`)

  const back = await ctx.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/placement`,
    headers: admin(ctx),
    payload: { placement: 'pooled' },
  })
  t.match(back.json(), { tenant: { placement: 'pooled' } })
  t.equal(await shardOf(ctx, tenant.id), pooledShard)
  t.same(await partitionsOf(dedicatedShard), [], 'the emptied dedicated partitions are dropped')
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).body, before)
  const verify = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))
  t.match(verify.json(), { ok: true })
  const unknown = await ctx.app.inject({
    method: 'PUT',
    url: '/admin/v1/tenants/0190a6d2-0000-7000-8000-000000000000/placement',
    headers: admin(ctx),
    payload: { placement: 'pooled' },
  })
  t.equal(unknown.statusCode, 404)
})

t.test("requests made during a placement move wait for it and see the tenant's data", async (t) => {
  const tenant = await onboard(ctx, 'busy-mover')
  const invoiceId = await workload(tenant)
  const reads = Array.from({ length: 20 },
    () => ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` })))
  const move = ctx.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/placement`,
    headers: admin(ctx),
    payload: { placement: 'dedicated' },
  })
  const more = Array.from({ length: 20 },
    () => ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` })))
  const results = await Promise.all([...reads, ...more])
  t.equal((await move).statusCode, 200)
  t.same([...new Set(results.map((r) => r.statusCode))], [200], 'no read missed the invoice')
})

t.test('operator reads show a tenant as moving while its move runs', async (t) => {
  const slow = await buildTestApp(t, { CACHE_GRACE_MS: 700 })
  const tenant = await onboard(slow, 'moving-one')
  const move = slow.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/placement`,
    headers: admin(slow),
    payload: { placement: 'dedicated' },
  })
  const statusOf = async (id: string) =>
    (await query<{ status: string }>(slow.db.adminUrl, 'SELECT status FROM tenants WHERE id = $1', [id]))[0]?.status
  await waitUntil('the tenant is marked moving', async () => await statusOf(tenant.id) === 'moving')
  const one = await slow.app.inject({ method: 'GET', url: `/admin/v1/tenants/${tenant.id}`, headers: admin(slow) })
  t.equal(one.statusCode, 200, one.body)
  t.match(one.json(), { status: 'moving', placement: 'pooled' })
  const list = await slow.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: admin(slow) })
  t.equal(list.statusCode, 200, list.body)
  t.match(list.json<{ data: unknown[] }>().data, [{ id: tenant.id, status: 'moving' }])
  t.equal((await move).statusCode, 200)
  const after = await slow.app.inject({ method: 'GET', url: `/admin/v1/tenants/${tenant.id}`, headers: admin(slow) })
  t.match(after.json(), { status: 'active', placement: 'dedicated' })
})

t.test('a tenant left moving by a move that died is taken over by the next move or the sweep, ' +
  'never while a mover lives', async (t) => {
  const tenant = await onboard(ctx, 'stuck-mover')
  const invoiceId = await workload(tenant)
  const setStatus = async (status: string) => {
    await query(ctx.db.adminUrl, 'UPDATE tenants SET status = $2 WHERE id = $1', [tenant.id, status])
  }
  const status = async () => (await ctx.app.inject({
    method: 'GET',
    url: `/admin/v1/tenants/${tenant.id}`,
    headers: admin(ctx),
  })).json<{ status: string, placement: string }>()
  const put = (placement: string) => ctx.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/placement`,
    headers: admin(ctx),
    payload: { placement },
  })

  // A move that crashed after marking the tenant: nobody holds its operation lock.
  await setStatus('moving')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: admin(ctx) })).statusCode, 200,
    'the list still serialises')
  const resumed = await put('dedicated')
  t.equal(resumed.statusCode, 200, resumed.body)
  t.match(await status(), { status: 'active', placement: 'dedicated' })
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).statusCode, 200)

  // A live mover elsewhere (its operation lock held): neither a move nor the sweep interferes.
  await setStatus('moving')
  const mover = await holdTransaction(ctx.db.ownerUrl,
    [['SELECT pg_advisory_lock(hashtextextended($1::text, $2))', [tenant.id, OPERATION_LOCK_SALT]]])
  t.teardown(mover.release)
  t.equal((await put('pooled')).statusCode, 409, 'a second mover is refused')
  const busySweep = await ctx.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: admin(ctx) })
  t.notOk(busySweep.json<{ tenants_reset: string[] }>().tenants_reset.includes(tenant.id))
  t.match(await status(), { status: 'moving' })
  await mover.release()

  // The mover died: the sweep sets the tenant back to active, where it is.
  const sweep = await ctx.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: admin(ctx) })
  t.equal(sweep.statusCode, 200)
  t.match(sweep.json(), { tenants_reset: [tenant.id] })
  t.match(await status(), { status: 'active', placement: 'dedicated' })
})

t.test("another tenant's reads are not held up while a dedicated tenant's rows move", async (t) => {
  const tenant = await onboard(ctx, 'slow-mover')
  const invoiceId = await workload(tenant)
  const bystander = await onboard(ctx, 'bystander')
  const theirInvoice = await workload(bystander)
  for (const placement of ['dedicated', 'pooled']) {
    // Stall the move's data transaction on one of the mover's rows, locked through its partition
    // (a lock on the parent would rightly keep the partition DDL from ever getting its turn).
    const moverShard = await shardOf(ctx, tenant.id)
    const rowLock = await holdTransaction(ctx.db.adminUrl,
      [[`SELECT 1 FROM invoices_s${moverShard} WHERE id = $1 FOR UPDATE`, [invoiceId]]])
    t.teardown(rowLock.release)
    const move = ctx.app.inject({
      method: 'PUT',
      url: `/admin/v1/tenants/${tenant.id}/placement`,
      headers: admin(ctx),
      payload: { placement },
    })
    await waitUntil('the move waits for the row lock', () => someoneWaits(ctx, /^UPDATE "invoices" SET shard/))
    for (const url of [`/v1/invoices/${theirInvoice}`, '/v1/invoices', '/v1/audit-events']) {
      const read = await timed(ctx.app.inject(as(bystander, { method: 'GET', url })), 3000)
      t.ok(read.ms < 1000,
        `GET ${url} of another tenant answered in ${Math.round(read.ms)} ms while the ${placement} move waited`)
      t.equal(read.result?.statusCode, 200)
    }
    const write = await timed(ctx.app.inject(as(bystander, {
      method: 'POST',
      url: '/v1/customers',
      payload: { name: 'during the move' },
    })), 3000)
    t.ok(write.ms < 1000, `and a write in ${Math.round(write.ms)} ms`)
    await rowLock.release()
    t.equal((await move).statusCode, 200)
    const moved = await ctx.app.inject({ method: 'GET', url: `/admin/v1/tenants/${tenant.id}`, headers: admin(ctx) })
    t.match(moved.json(), { placement, status: 'active' })
  }
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${invoiceId}` }))).statusCode, 200)
})

t.test("two dedicated onboardings racing for one slug leave only the winner's partitions", async (t) => {
  const tablePartitions = async () => (await query<{ relname: string }>(ctx.db.adminUrl,
    "SELECT relname FROM pg_class WHERE relispartition AND relkind = 'r'")).map((r) => r.relname)
  const before = await tablePartitions()
  const results = await Promise.all([1, 2].map(() => ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: admin(ctx),
    payload: { name: 'r', slug: 'racing', placement: 'dedicated' },
  })))
  t.same(results.map((r) => r.statusCode).sort(), [201, 409])
  const winner = results.find((r) => r.statusCode === 201)!.json<{ tenant: { id: string } }>().tenant.id
  const after = await tablePartitions()
  t.same(after.filter((p) => !before.includes(p)).sort(), (await partitionsOf(await shardOf(ctx, winner))).sort(),
    "the winner's partitions only")
  t.same(await query(ctx.db.adminUrl, 'SELECT shard FROM shard_reservations'), [], 'nothing left reserved')
})

t.test('partitions reserved by an operation that died are removed by the sweep, unless it still runs', async (t) => {
  const own = await buildTestApp(t)
  const reserve = async (subject: string): Promise<number> => {
    const [{ shard }] = await query<{ shard: number }>(own.db.ownerUrl,
      "SELECT nextval('dedicated_shards')::integer AS shard") as [{ shard: number }]
    await query(own.db.ownerUrl, 'SELECT create_shard_partitions($1)', [shard])
    await query(own.db.ownerUrl,
      "INSERT INTO shard_reservations (shard, subject_tenant_id, purpose) VALUES ($1, $2, 'onboarding')",
      [shard, subject])
    return shard
  }
  const dead = await reserve('0190a6d2-0000-7000-8000-0000000000d1')
  const alive = await reserve('0190a6d2-0000-7000-8000-0000000000d2')
  const running = await holdTransaction(own.db.ownerUrl, [[
    'SELECT pg_advisory_lock(hashtextextended($1::text, $2))',
    ['0190a6d2-0000-7000-8000-0000000000d2', OPERATION_LOCK_SALT],
  ]])
  t.teardown(running.release)
  const sweep = await own.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: admin(own) })
  t.match(sweep.json(), { shards_released: [dead], shards_left: [alive] })
  t.same(await partitionsIn(own, dead), [], 'the dead operation\'s partitions are gone')
  t.equal((await partitionsIn(own, alive)).length, 4, 'the live one\'s are kept')
  await running.release()
  t.match((await own.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: admin(own) })).json(),
    { shards_released: [alive], shards_left: [] })
  t.same(await query(own.db.adminUrl, 'SELECT shard FROM shard_reservations'), [])
})

t.test('a dedicated onboarding that fails after creating its partitions removes them again', async (t) => {
  const own = await buildTestApp(t)
  // The tenant row is refused once the partitions exist (the provisioning transaction fails).
  await query(own.db.adminUrl, `CREATE FUNCTION refuse_tenant() RETURNS trigger LANGUAGE plpgsql
      AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
    CREATE TRIGGER refuse_tenant BEFORE INSERT ON tenants FOR EACH ROW WHEN (NEW.slug = 'refused')
      EXECUTE FUNCTION refuse_tenant()`)
  const [{ last }] = await query<{ last: string }>(own.db.adminUrl,
    'SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text AS last ' +
    'FROM dedicated_shards') as [{ last: string }]
  const res = await own.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: admin(own),
    payload: { name: 'r', slug: 'refused', placement: 'dedicated' },
  })
  t.equal(res.statusCode, 500)
  const [{ now }] = await query<{ now: string }>(own.db.adminUrl,
    'SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text AS now ' +
    'FROM dedicated_shards') as [{ now: string }]
  t.not(now, last, 'a shard was allocated and its partitions created')
  t.same(await partitionsIn(own, Number(now)), [], 'and removed when provisioning failed')
  t.same(await query(own.db.adminUrl, 'SELECT shard FROM shard_reservations'), [], 'nothing left reserved')
})
