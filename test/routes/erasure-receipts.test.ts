import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { operator } from '../helpers/operator.ts'

// GET /admin/v1/erasure-receipts and GET /admin/v1/tenant-slugs/:slug.

interface Receipt {
  id: string
  tenant_id: string
  slug: string
  verified: boolean
  rows_removed: Record<string, number>
}
interface ReceiptPage { data: Receipt[], next_cursor: string | null }

const ctx = await buildTestApp(t)
const list = async (query = '') => ctx.app.inject({ url: `/admin/v1/erasure-receipts${query}`, headers: operator(ctx) })
const erase = async (id: string) => {
  const res = await ctx.app.inject({ method: 'DELETE', url: `/admin/v1/tenants/${id}`, headers: operator(ctx) })
  if (res.statusCode !== 200) throw new Error(`erasure failed: ${res.statusCode} ${res.body}`)
  return res.json<Receipt>()
}

t.test('the receipts of erased tenants, the latest first, one tenant\'s on request, page by page', async (t) => {
  t.same((await list()).json(), { data: [], next_cursor: null }, 'none before any erasure')
  const first = await provisionTenant(ctx, 'erased-first')
  const second = await provisionTenant(ctx, 'erased-second')
  const kept = await provisionTenant(ctx, 'kept')
  const firstReceipt = await erase(first.id)
  const secondReceipt = await erase(second.id)
  const all = (await list()).json<ReceiptPage>()
  t.same(all.data.map((r) => r.id), [secondReceipt.id, firstReceipt.id], 'the latest erasure first')
  t.same(all.data[1], firstReceipt, 'the receipt the erasure returned, as it was')
  t.notOk(JSON.stringify(all).includes(kept.id), 'no tenant that was not erased')
  const mine = (await list(`?tenant_id=${first.id.toUpperCase()}`)).json<ReceiptPage>()
  t.same(mine.data.map((r) => r.id), [firstReceipt.id], 'tenant_id narrows the list (any case)')
  const page1 = (await list('?limit=1')).json<ReceiptPage>()
  t.equal(page1.data.length, 1)
  t.type(page1.next_cursor, 'string')
  const page2 = (await list(`?limit=1&cursor=${page1.next_cursor!}`)).json<ReceiptPage>()
  t.same([...page1.data, ...page2.data].map((r) => r.id), [secondReceipt.id, firstReceipt.id], 'pages follow on')
  t.equal(page2.next_cursor, null)
})

t.test('a bad cursor or tenant id is a 400, a tenant key a 401', async (t) => {
  t.equal((await list('?cursor=nope')).statusCode, 400)
  t.equal((await list('?tenant_id=nope')).statusCode, 400)
  t.equal((await list('?other=1')).statusCode, 400)
  const tenant = await provisionTenant(ctx, 'curious')
  t.equal((await ctx.app.inject(as(tenant, { url: '/admin/v1/erasure-receipts' }))).statusCode, 401)
})
