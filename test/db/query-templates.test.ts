import t from 'tap'
import pg from 'pg'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

// Templates are kept per shard: tenants that share a pooled shard share a template, so the tenant
// must be filled in afresh on every run. Provision tenants until two share a shard.
const statements: string[] = []
const sent: Array<{ sql: string, values: readonly unknown[] }> = []
const ctx = await buildTestApp(t, {}, undefined, {
  onQuery: (sql, values) => { statements.push(sql); sent.push({ sql, values }) },
})
const byShard = new Map<number, ProvisionedTenant[]>()
let pair: ProvisionedTenant[] | undefined
while (pair === undefined) {
  const tenant = await provisionTenant(ctx)
  const [row] = await query<{ shard: number }>(ctx.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1', [tenant.id])
  const same = [...(byShard.get(row!.shard) ?? []), tenant]
  byShard.set(row!.shard, same)
  if (same.length === 2) pair = same
}
const [first, second] = pair as [ProvisionedTenant, ProvisionedTenant]

async function invoiceOf (tenant: ProvisionedTenant, memo: string): Promise<string> {
  const customer = (await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: memo } })))
    .json<{ id: string }>()
  const invoice = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customer.id,
      currency: 'EUR',
      memo,
      lines: [{ description: memo, quantity: 1, unit_amount_cents: 1 }],
    },
  }))
  return invoice.json<{ id: string }>().id
}

t.test("a template built for one tenant serves the next tenant of the shard with that tenant's values", async (t) => {
  const a = await invoiceOf(first, 'first tenant')
  const b = await invoiceOf(second, 'second tenant')
  const readA = await ctx.app.inject(as(first, { method: 'GET', url: `/v1/invoices/${a}` })) // builds the template
  t.equal(readA.json<{ memo: string }>().memo, 'first tenant')
  statements.length = 0
  const readB = await ctx.app.inject(as(second, { method: 'GET', url: `/v1/invoices/${b}` })) // reuses it
  t.equal(readB.statusCode, 200)
  t.equal(readB.json<{ memo: string }>().memo, 'second tenant')
  t.equal((await ctx.app.inject(as(second, { method: 'GET', url: `/v1/invoices/${a}` }))).statusCode, 404,
    "the other tenant's invoice stays invisible")
  t.equal((await ctx.app.inject(as(first, { method: 'GET', url: `/v1/invoices/${b}` }))).statusCode, 404)
  const select = statements.find((s) => s.startsWith('select "invoices".*'))
  t.ok(select, 'the reused statement was sent')
})

t.test('each shape of a list (which filters are given) has its own template, and filters apply', async (t) => {
  const listed = async (tenant: ProvisionedTenant, qs: string): Promise<string[]> =>
    (await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices${qs}` })))
      .json<{ data: Array<{ memo: string }> }>().data.map((i) => i.memo)
  const open = await invoiceOf(first, 'to finalize')
  await ctx.app.inject(as(first, { method: 'POST', url: `/v1/invoices/${open}/finalize` }))
  t.same(await listed(first, ''), ['to finalize', 'first tenant'])
  t.same(await listed(first, '?status=open'), ['to finalize'])
  t.same(await listed(first, '?status=draft'), ['first tenant'])
  t.same(await listed(second, '?status=open'), [],
    'the other tenant of the shard, through the same template: none of its invoices are open')
  t.same(await listed(second, ''), ['second tenant'])
  const page = await ctx.app.inject(as(first, { method: 'GET', url: '/v1/invoices?limit=1' }))
  const cursor = page.json<{ next_cursor: string }>().next_cursor
  t.same(await listed(first, `?limit=1&cursor=${cursor}`), ['first tenant'], 'the cursor (another shape) pages on')
})

t.test("the invoice list's statement keeps a generic plan: its LIMIT is written in, not a parameter", async (t) => {
  // PostgreSQL re-plans a prepared statement on every execution while its generic plan looks
  // costlier than the custom ones, which a parameterised LIMIT always does. Prepare the statement
  // the server sends, run it as PostgreSQL's plan cache sees a pooled connection run it, and ask.
  // Enough invoices, with statistics, that the planner's guess for an unknown LIMIT (a tenth of
  // the rows) costs more than the real one; with a handful of rows both plans cost the same.
  await query(ctx.db.adminUrl, `INSERT INTO invoices (tenant_id, shard, id, customer_id, currency, amount_cents)
    SELECT t.id, t.shard, gen_random_uuid(), (SELECT c.id FROM customers c WHERE c.tenant_id = t.id LIMIT 1), 'EUR', 0
      FROM tenants t, generate_series(1, 3000) WHERE t.id = $1`, [first.id])
  await query(ctx.db.adminUrl, 'ANALYZE invoices, invoice_lines')
  sent.length = 0
  t.equal((await ctx.app.inject(as(first, { method: 'GET', url: '/v1/invoices?limit=2' }))).statusCode, 200)
  const list = sent.find((s) => s.sql.startsWith('select "invoices"."id", CASE WHEN row_number()'))
  if (list === undefined) throw new Error('the list statement was not sent')
  t.match(list.sql, / limit 11$/, 'the fetch size (limit + 1, rounded up to a size) is a literal')
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(async () => { await client.end() })
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [first.id])
  for (let i = 0; i < 8; i++) {
    const { rows } = await client.query<{ json: string | null }>({
      name: 'listed',
      text: list.sql,
      values: [...list.values],
    })
    t.equal(rows.filter((r) => r.json !== null).length, 2, 'a page of two rendered, of the rows read')
  }
  const [plans] = (await client.query<{ generic_plans: string, custom_plans: string }>(
    "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'listed'")).rows
  t.ok(Number(plans!.generic_plans) >= 3,
    `the generic plan is kept (generic ${plans!.generic_plans}, custom ${plans!.custom_plans})`)
  await client.query('ROLLBACK')
})
