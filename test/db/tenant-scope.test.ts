import t from 'tap'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import { TenantScopePlugin, loadTenantTables } from '../../src/db/tenant-scope.ts'
import type { DB } from '../../src/db/schema.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { createTestDatabase, query } from '../helpers/db.ts'
import { scopingGaps, scopingValues, tenantReferences } from '../helpers/scoping.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'
import { addMember } from '../helpers/members.ts'

const tenantId = '0190a6d2-0000-7000-8000-0000000000aa'

t.test('the plugin adds the tenant (and shard) predicate to selects, joins, subqueries, updates ' +
  'and deletes', async (t) => {
  const database = await createTestDatabase(t)
  const pool = new pg.Pool({ connectionString: database.appUrl, max: 1 })
  t.teardown(() => pool.end())
  const tables = await loadTenantTables(pool)
  t.match(Object.fromEntries(tables), {
    tenants: { keyColumn: 'id', sharded: false },
    customers: { keyColumn: 'tenant_id', sharded: false },
    invoices: { keyColumn: 'tenant_id', sharded: true },
    invoice_lines: { keyColumn: 'tenant_id', sharded: true },
    audit_events: { keyColumn: 'tenant_id', sharded: true },
  })
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
    .withPlugin(new TenantScopePlugin(tables, { tenantId, shard: 7 }))
  t.teardown(() => db.destroy())

  const select = db.selectFrom('customers').selectAll().where('name', '=', 'x').compile()
  t.match(select.sql, /where \("name" = \$1\) and "customers"."tenant_id" = \$2$/)
  t.same(select.parameters, ['x', tenantId])

  const join = db.selectFrom('invoices as i').leftJoin('customers as c', 'c.id', 'i.customer_id')
    .select(['i.id', 'c.name']).compile()
  t.match(join.sql, /left join "customers" as "c" on "c"."id" = "i"."customer_id" and "c"."tenant_id" = \$1/)
  t.match(join.sql, /where "i"."tenant_id" = \$2 and "i"."shard" = \$3$/)
  t.same(join.parameters, [tenantId, tenantId, 7])

  const sub = db.selectFrom('customers').select('id')
    .where('id', 'in', (eb) => eb.selectFrom('invoices').select('customer_id')).compile()
  t.match(sub.sql, new RegExp(/select "customer_id" from "invoices_s7" as "invoices" /.source +
    /where "invoices"."tenant_id" = \$1 and "invoices"."shard" = \$2\)/.source))

  // Reads of a sharded table name the tenant's partition (under the name the query uses); locking
  // reads and writes stay on the parent.
  t.match(join.sql, /from "invoices_s7" as "i" left join "customers" as "c"/)
  const locked = db.selectFrom('invoices').select('status').where('id', '=', tenantId).forUpdate().compile()
  t.match(locked.sql, /^select "status" from "invoices" where/)
  const unscopedLeaf = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
    .withPlugin(new TenantScopePlugin(tables, { tenantId, shard: 7 }, { leafReads: false }))
  t.match(unscopedLeaf.selectFrom('invoices').select('id').compile().sql, /^select "id" from "invoices" where/,
    'leaf reads can be turned off')

  const update = db.updateTable('invoices').set({ memo: 'm' }).where('id', '=', tenantId).compile()
  t.match(update.sql, new RegExp(/^update "invoices" set "memo" = \$1 where \("id" = \$2\) /.source +
    /and "invoices"."tenant_id" = \$3 and "invoices"."shard" = \$4$/.source))

  const del = db.deleteFrom('customers').compile()
  t.match(del.sql, /^delete from "customers" where "customers"."tenant_id" = \$1$/,
    'even a DELETE without WHERE is scoped')

  const registry = db.selectFrom('tenants').selectAll().compile()
  t.match(registry.sql, /where "tenants"."id" = \$1/, 'the registry is scoped by its id')

  const other = db.selectFrom(sql`pg_class`.as('c')).select(sql`1`.as('one')).compile()
  t.notMatch(other.sql, /tenant_id/, 'non-tenant tables are left alone')
})

t.test("one tenant's query plans exactly one partition", async (t) => {
  const ctx = await buildTestApp(t)
  const tenants = []
  for (let i = 0; i < 4; i++) tenants.push(await provisionTenant(ctx, `plan-${i}`))
  const dedicated = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    payload: { name: 'd', slug: 'plan-dedicated', placement: 'dedicated' },
  })
  const d = dedicated.json<{ tenant: { id: string } }>().tenant.id
  const pool = new pg.Pool({ connectionString: ctx.db.appUrl, max: 1 })
  t.teardown(() => pool.end())
  const tables = await loadTenantTables(pool)
  for (const id of [tenants[0]!.id, d]) {
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [id])
      const shard = (await client.query<{ shard: number }>('SELECT shard FROM tenants WHERE id = $1', [id]))
        .rows[0]!.shard
      const onClient = { connect: async () => ({ query: client.query.bind(client), release: () => {} }) }
      const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool: onClient as unknown as pg.Pool }) })
        .withPlugin(new TenantScopePlugin(tables, { tenantId: id, shard }))
      const q = db.selectFrom('invoices').selectAll().where('id', '=', '0190a6d2-0000-7000-8000-000000000001').compile()
      const { rows: [plan] } = await client.query(`EXPLAIN (FORMAT JSON, SUMMARY true) ${q.sql}`, [...q.parameters])
      const text = JSON.stringify(plan['QUERY PLAN'])
      const scanned = [...new Set([...text.matchAll(/"Relation Name":"(invoices_s\d+)"/g)].map((m) => m[1]))]
      t.same(scanned, [`invoices_s${shard}`], `tenant ${id} plans only its shard's partition`)
      t.notMatch(text, /Subplans Removed/, 'pruned while planning, not at executor start')
      // RLS alone (no explicit predicate) plans every partition: the plugin is what prunes.
      const { rows: [rlsOnly] } = await client.query('EXPLAIN (FORMAT JSON) SELECT * FROM invoices WHERE id = $1',
        ['0190a6d2-0000-7000-8000-000000000001'])
      t.ok([...JSON.stringify(rlsOnly['QUERY PLAN']).matchAll(/"Relation Name":"invoices_s\d+"/g)].length > 1,
        'without it, every partition is planned')
    } finally {
      await client.query('ROLLBACK')
      client.release()
    }
  }
})

t.test("every statement the API sends to a tenant table is scoped to the caller's tenant and shard", async (t) => {
  const statements: string[] = []
  const bound: Array<readonly unknown[]> = []
  const onQuery = (text: string, values: readonly unknown[]): void => { statements.push(text); bound.push(values) }
  const ctx = await buildTestApp(t, {}, undefined, { onQuery })
  const tenant = await provisionTenant(ctx)
  const placed = await query<{ shard: number }>(ctx.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1', [tenant.id])
  const shard = placed[0]!.shard
  statements.length = 0
  bound.length = 0
  // A workout of every tenant route.
  const customer = (await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'c', external_ref: 'r' },
    headers: { 'idempotency-key': 'k1' },
  }))).json<{ id: string }>()
  await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'c', external_ref: 'r' },
    headers: { 'idempotency-key': 'k1' },
  }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/customers?limit=1' }))
  await ctx.app.inject(as(tenant, { method: 'PATCH', url: `/v1/customers/${customer.id}`, payload: { name: 'd' } }))
  const inv = (await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customer.id,
      currency: 'EUR',
      lines: [{ description: 'x', quantity: 1, unit_amount_cents: 1 }],
    },
  }))).json<{ id: string }>()
  await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/invoices/${inv.id}`,
    payload: { lines: [{ description: 'y', quantity: 2, unit_amount_cents: 1 }] },
  }))
  for (const action of ['finalize', 'pay']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${inv.id}/${action}` }))
  }
  const voided = (await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customer.id,
      currency: 'EUR',
      lines: [{ description: 'v', quantity: 1, unit_amount_cents: 3 }],
    },
  }))).json<{ id: string }>()
  for (const action of ['finalize', 'void']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${voided.id}/${action}` }))
  }
  // a refused transition reads too
  await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${voided.id}/pay` }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices?status=paid&customer_id=${customer.id}` }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${inv.id}` }))
  const key = (await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'k', scopes: ['read'] },
  }))).json<{ id: string }>()
  await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/api-keys' }))
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${key.id}` }))
  await addMember(ctx, tenant, { user_id: 'u1', role: 'owner' })
  await ctx.app.inject({
    method: 'GET',
    url: '/v1/members',
    headers: { authorization: `Bearer ${signUserToken({ sub: 'u1', exp: inAnHour() })}` },
  })
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/u1' }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events' }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))
  await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${customer.id}` }))

  const tables = ctx.app.tenantTables
  const touching = statements.filter((s) => tenantReferences(s, tables) > 0)
  const references = touching.reduce((n, s) => n + tenantReferences(s, tables), 0)
  t.ok(touching.length > 30, `${touching.length} statements with ${references} tenant-table references were checked`)
  t.ok(touching.some((s) => /set "status" = \$\d+.*void/is.test(s) || /"voided_at"/.test(s)),
    'the void transition was among them')
  t.ok(touching.some((s) => /"paid_at"/.test(s)), 'and the pay transition')
  for (const [i, s] of statements.entries()) {
    if (tenantReferences(s, tables) === 0) continue
    const label = s.replace(/\s+/g, ' ').slice(0, 200)
    t.same(scopingGaps(s, tables), [], label)
    const scoped = scopingValues(s, bound[i]!, tables)
    t.ok(scoped.some((v) => v.column === 'tenant'), `a tenant value: ${label}`)
    const wrong = scoped.filter((v) => String(v.value) !== String(v.column === 'tenant' ? tenant.id : shard))
    t.same(wrong, [], `bound to tenant ${tenant.id}, shard ${shard}: ${label}`)
  }
})

t.test('the scoping check demands a predicate for every tenant-table reference, not one per statement', async (t) => {
  const tables = new Map([
    ['tenants', { keyColumn: 'id', sharded: false }],
    ['customers', { keyColumn: 'tenant_id', sharded: false }],
    ['invoices', { keyColumn: 'tenant_id', sharded: true }],
    ['audit_events', { keyColumn: 'tenant_id', sharded: true }],
  ])
  const gaps = (sql: string) => scopingGaps(sql, tables)
  t.same(gaps('select "i"."id" from "invoices" as "i" inner join "customers" as "c" on "c"."id" = "i"."customer_id" ' +
    'and "c"."tenant_id" = $1 where "i"."tenant_id" = $2 and "i"."shard" = $3'), [], 'both sides of a join scoped')
  t.match(gaps('select "i"."id" from "invoices" as "i" inner join "customers" as "c" on "c"."id" = "i"."customer_id" ' +
    'where "i"."tenant_id" = $1 and "i"."shard" = $2'), [/lacks a tenant_id/], 'a join scoped on one side only')
  t.match(gaps('select * from "invoices" where "invoices"."tenant_id" = $1'), [/lacks a shard/],
    'a sharded table without its shard')
  t.same(gaps(('SELECT (SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND shard = $2) AS n ' +
    'FROM (SELECT 1) one LEFT JOIN audit_heads h ON h.tenant_id = $3')
    .replace('audit_heads', 'customers')), [], 'raw subqueries with unqualified predicates')
  t.match(gaps('SELECT * FROM audit_events a, audit_events b WHERE tenant_id = $1 AND a.shard = $2 AND b.shard = $3'),
    [/1 of a, b lacks a tenant_id/], 'one unqualified predicate covers one reference')
  t.same(gaps('select * from "invoices_s3" as "invoices" where "invoices"."tenant_id" = $1'), [],
    'a partition read directly needs the tenant, its shard is implied')
  t.match(gaps('select * from "tenants" where "id" = $1'), [/lacks a id/],
    'the registry needs its qualified id predicate')
  t.same(gaps('insert into "customers" ("id", "name") values ($1, $2)'), [], 'insert targets need none')
  t.same(gaps('SELECT shard, status FROM bind_tenant($1::uuid, $2::uuid, $3::text)'), [], 'functions are not tables')
})
