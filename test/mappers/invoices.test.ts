// The invoice list is rendered by the database (INVOICE_SQL_FIELDS), every other invoice response by
// toInvoice and the response schema's serializer. Both must give the same JSON, field for field.
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import t from 'tap'
import { InvoicePage } from '../../src/schemas/invoices.ts'
import { SHARED_SCHEMAS } from '../../src/schemas/shared.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)
const other = await provisionTenant(ctx)
const customer = (await ctx.app.inject(as(tenant, {
  method: 'POST',
  url: '/v1/customers',
  payload: { name: 'Rendered' },
}))).json<{ id: string }>()

async function create (payload: Record<string, unknown>): Promise<string> {
  const res = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: { customer_id: customer.id, currency: 'EUR', ...payload },
  }))
  if (res.statusCode !== 201) throw new Error(res.body)
  return res.json<{ id: string }>().id
}

// Every state, null and non-null optional fields, the largest amounts, odd text.
const line = (quantity: number, unit: number, description = 'item'): Record<string, unknown> =>
  ({ description, quantity, unit_amount_cents: unit })
const ids = [
  await create({ lines: [line(1, 0)] }),
  await create({
    lines: [line(3, 100), line(2, 250, 'second — "quoted" \\ ünïcode 🧾')],
    memo: 'memo with\nnewline',
    due_date: '2026-12-31',
  }),
  await create({ lines: [line(90_071, 100_000_000_000)] }), // 9,007,100,000,000,000: near 2^53
  await create({ lines: Array.from({ length: 100 }, (_, i) => line(i + 1, i)) }),
  await create({ lines: [line(1, 1)], memo: null, due_date: null }),
]
const transitions = [[ids[1], ['finalize']], [ids[2], ['finalize', 'pay']], [ids[3], ['finalize', 'void']]] as const
for (const [id, steps] of transitions) {
  for (const step of steps) await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${id}/${step}` }))
}
// Microseconds in every timestamp, so that millisecond rounding versus truncation would show.
await query(ctx.db.adminUrl, "UPDATE invoices SET created_at = created_at + interval '0.000999 seconds', " +
  "updated_at = updated_at + interval '0.000501 seconds' WHERE tenant_id = $1", [tenant.id])
await ctx.app.inject(as(other, { method: 'POST', url: '/v1/customers', payload: { name: 'not listed' } }))

t.test('every item of a database-rendered page equals the invoice as GET /v1/invoices/:id renders it', async (t) => {
  const page = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices?limit=200' }))
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^application\/json/)
  const body = page.json<{ data: Array<{ id: string }>, next_cursor: string | null }>()
  t.same(body.data.map((i) => i.id), [...ids].reverse(), 'newest first, this tenant only')
  t.equal(body.next_cursor, null)
  for (const item of body.data) {
    const one = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices/${item.id}` }))
    t.same(item, one.json(), `invoice ${item.id} is rendered identically`)
    t.same(Object.keys(item).sort(), Object.keys(one.json()).sort(), 'with the same fields, no more')
  }
  const ajv = new Ajv({ strict: false })
  ajvFormats.default(ajv)
  ajv.addSchema([...SHARED_SCHEMAS])
  const validate = ajv.compile(InvoicePage)
  t.ok(validate(body), `the page validates against the response schema ${JSON.stringify(validate.errors)}`)
})

t.test('pages, cursors and filters of the database-rendered list', async (t) => {
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const url = `/v1/invoices?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`
    const res: { json: <T>() => T } = await ctx.app.inject(as(tenant, { method: 'GET', url }))
    const body: { data: Array<{ id: string }>, next_cursor: string | null } = res.json()
    t.ok(body.data.length <= 2)
    seen.push(...body.data.map((i) => i.id))
    cursor = body.next_cursor
  } while (cursor !== null)
  t.same(seen, [...ids].reverse(), 'every invoice exactly once, in order')
  const open = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices?status=open' }))
  t.same(open.json<{ data: Array<{ id: string }> }>().data.map((i) => i.id), [ids[1]])
  const empty = await ctx.app.inject(as(other, { method: 'GET', url: '/v1/invoices' }))
  t.same(empty.json(), { data: [], next_cursor: null }, 'a tenant without invoices gets an empty page')
  const exact = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/invoices?limit=${ids.length}` }))
  t.equal(exact.json<{ next_cursor: string | null }>().next_cursor, null,
    'a page that ends exactly at the last invoice has no next cursor')
})
