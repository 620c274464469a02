import t from 'tap'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

// Templates are kept per shard: tenants that share a pooled shard share a template, so the tenant
// must be filled in afresh on every run. Provision tenants until two share a shard.
const statements: string[] = []
const ctx = await buildTestApp(t, {}, undefined, { onQuery: (sql) => { statements.push(sql) } })
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
  const customer = (await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: memo } }))).json<{ id: string }>()
  const invoice = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload: { customer_id: customer.id, currency: 'EUR', memo, lines: [{ description: memo, quantity: 1, unit_amount_cents: 1 }] } }))
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
  t.equal((await ctx.app.inject(as(second, { method: 'GET', url: `/v1/invoices/${a}` }))).statusCode, 404, "the other tenant's invoice stays invisible")
  t.equal((await ctx.app.inject(as(first, { method: 'GET', url: `/v1/invoices/${b}` }))).statusCode, 404)
  const select = statements.find((s) => s.startsWith('select "invoices".*'))
  t.ok(select, 'the reused statement was sent')
})

t.test('each shape of a list (which filters are given) has its own template, and filters apply', async (t) => {
  const listed = async (tenant: ProvisionedTenant, qs: string): Promise<string[]> =>
    (await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices${qs}` }))).json<{ data: Array<{ memo: string }> }>().data.map((i) => i.memo)
  const open = await invoiceOf(first, 'to finalize')
  await ctx.app.inject(as(first, { method: 'POST', url: `/v1/invoices/${open}/finalize` }))
  t.same(await listed(first, ''), ['to finalize', 'first tenant'])
  t.same(await listed(first, '?status=open'), ['to finalize'])
  t.same(await listed(first, '?status=draft'), ['first tenant'])
  t.same(await listed(second, '?status=open'), [], 'the other tenant of the shard, through the same template: none of its invoices are open')
  t.same(await listed(second, ''), ['second tenant'])
  const page = await ctx.app.inject(as(first, { method: 'GET', url: '/v1/invoices?limit=1' }))
  const cursor = page.json<{ next_cursor: string }>().next_cursor
  t.same(await listed(first, `?limit=1&cursor=${cursor}`), ['first tenant'], 'the cursor (another shape) pages on')
})
