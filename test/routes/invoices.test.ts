import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t, { DB_POOL_MAX: 8 })
const tenant = await provisionTenant(ctx)

interface Invoice {
  id: string,
  number: string | null,
  status: string,
  amount_cents: number,
  customer_id: string,
  lines: Array<{ amount_cents: number }>,
  currency: string,
  due_date: string | null,
}

async function customer (who: ProvisionedTenant = tenant): Promise<string> {
  const res = await ctx.app.inject(as(who, { method: 'POST', url: '/v1/customers', payload: { name: 'Buyer' } }))
  return res.json<{ id: string }>().id
}

const line = (quantity: number, unit: number, description = 'work') =>
  ({ description, quantity, unit_amount_cents: unit })

async function draft (who: ProvisionedTenant = tenant, customerId?: string): Promise<Invoice> {
  const res = await ctx.app.inject(as(who, {
    method: 'POST',
    url: '/v1/invoices',
    payload: { customer_id: customerId ?? await customer(who), currency: 'EUR', lines: [line(2, 1500), line(1, 250)] },
  }))
  if (res.statusCode !== 201) throw new Error(res.body)
  return res.json<Invoice>()
}

const post = (url: string, who: ProvisionedTenant = tenant) => ctx.app.inject(as(who, { method: 'POST', url }))

t.test('a draft is created with server-computed amounts', async (t) => {
  const customerId = await customer()
  const res = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customerId,
      currency: 'EUR',
      lines: [line(3, 1999, 'a'), line(1, 1, 'b')],
      due_date: '2027-01-31',
      memo: 'thanks',
    },
  }))
  t.equal(res.statusCode, 201)
  t.match(res.json(), {
    customer_id: customerId,
    number: null,
    status: 'draft',
    currency: 'EUR',
    amount_cents: 5998,
    due_date: '2027-01-31',
    memo: 'thanks',
    lines: [
      { description: 'a', quantity: 3, unit_amount_cents: 1999, amount_cents: 5997 },
      { description: 'b', quantity: 1, unit_amount_cents: 1, amount_cents: 1 },
    ],
  })
})

t.test('arithmetic edges: exact up to 2^53 − 1, a 400 beyond, never a float', async (t) => {
  const customerId = await customer()
  const create = (lines: unknown[]) => ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: { customer_id: customerId, currency: 'USD', lines },
  }))
  // 90071 × 100000000000 = 9007100000000000 ≤ 2^53 − 1 = 9007199254740991
  const big = await create([line(90071, 100_000_000_000)])
  t.equal(big.statusCode, 201)
  t.equal(big.json<Invoice>().amount_cents, 9007100000000000)
  const exact = await create([line(90071, 100_000_000_000), line(1, 99254740991)])
  t.equal(exact.json<Invoice>().amount_cents, 9007199254740991, 'exactly 2^53 − 1')
  const over = await create([line(90071, 100_000_000_000), line(1, 99254740992)])
  t.equal(over.statusCode, 400)
  t.match(over.json(), { errors: [{ path: 'body/lines' }] })
  const lineOver = await create([line(1_000_000, 100_000_000_000)])
  t.equal(lineOver.statusCode, 400, 'one line of 10^17')
  t.match(lineOver.json(), { errors: [{ path: 'body/lines/0' }] })
  const zero = await create([line(1, 0)])
  t.equal(zero.json<Invoice>().amount_cents, 0, 'a free line is fine')
})

t.test('invalid invoices are 400s naming the field', async (t) => {
  const customerId = await customer()
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ currency: 'eur', lines: [line(1, 1)] }, 'body/currency'],
    [{ currency: 'EUR', lines: [] }, 'body/lines'],
    [{ currency: 'EUR', lines: Array.from({ length: 101 }, () => line(1, 1)) }, 'body/lines'],
    [{ currency: 'EUR', lines: [line(0, 1)] }, 'body/lines/0/quantity'],
    [{ currency: 'EUR', lines: [line(1_000_001, 1)] }, 'body/lines/0/quantity'],
    [{ currency: 'EUR', lines: [line(1, -1)] }, 'body/lines/0/unit_amount_cents'],
    [{ currency: 'EUR', lines: [line(1, 100_000_000_001)] }, 'body/lines/0/unit_amount_cents'],
    [{ currency: 'EUR', lines: [{ description: 'x', quantity: '5', unit_amount_cents: 1 }] }, 'body/lines/0/quantity'],
    [{ currency: 'EUR', lines: [{ description: 'x', quantity: 1.5, unit_amount_cents: 1 }] }, 'body/lines/0/quantity'],
    [{ currency: 'EUR', lines: [line(1, 1, '')] }, 'body/lines/0/description'],
    [{ currency: 'EUR', lines: [line(1, 1)], due_date: '2027-02-30x' }, 'body/due_date'],
    [{ currency: 'EUR', lines: [line(1, 1)], amount_cents: 1 }, 'body/amount_cents'],
  ]
  for (const [body, path] of cases) {
    const res = await ctx.app.inject(as(tenant, {
      method: 'POST',
      url: '/v1/invoices',
      payload: { customer_id: customerId, ...body },
    }))
    t.equal(res.statusCode, 400, path)
    t.ok(res.json<{ errors: Array<{ path: string }> }>().errors.some((e) => e.path === path), `${path} in ${res.body}`)
  }
})

t.test('a customer_id outside the tenant is a 422 and nothing is written', async (t) => {
  const other = await provisionTenant(ctx)
  const theirs = await customer(other)
  const before = await query<{ n: number }>(ctx.db.adminUrl,
    'SELECT (SELECT count(*)::int FROM invoices) + (SELECT count(*)::int FROM invoice_lines) AS n')
  for (const customerId of [theirs, '0190a6d2-0000-7000-8000-000000000000']) {
    const res = await ctx.app.inject(as(tenant, {
      method: 'POST',
      url: '/v1/invoices',
      payload: { customer_id: customerId, currency: 'EUR', lines: [line(1, 1)] },
    }))
    t.equal(res.statusCode, 422)
    t.match(res.json(), { errors: [{ path: 'body/customer_id' }] })
    t.notMatch(res.body, /invoices_customer_fkey|violates|Key \(|tenant_id/)
  }
  const after = await query<{ n: number }>(ctx.db.adminUrl,
    'SELECT (SELECT count(*)::int FROM invoices) + (SELECT count(*)::int FROM invoice_lines) AS n')
  t.equal(after[0]!.n, before[0]!.n)
})

t.test('the lifecycle: draft → open → paid | void, every other transition is a 409', async (t) => {
  const inv = await draft()
  t.equal((await post(`/v1/invoices/${inv.id}/pay`)).statusCode, 409, 'a draft cannot be paid')
  t.equal((await post(`/v1/invoices/${inv.id}/void`)).statusCode, 409, 'a draft cannot be voided')
  const opened = await post(`/v1/invoices/${inv.id}/finalize`)
  t.equal(opened.statusCode, 200)
  t.match(opened.json(), { status: 'open', number: /^INV-\d{6}$/ })
  t.equal((await post(`/v1/invoices/${inv.id}/finalize`)).statusCode, 409, 'finalizing twice')
  const edit = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/invoices/${inv.id}`,
    payload: { memo: 'late' },
  }))
  t.equal(edit.statusCode, 409, 'only drafts can be edited')
  const paid = await post(`/v1/invoices/${inv.id}/pay`)
  t.match(paid.json(), { status: 'paid', paid_at: /Z$/ })
  for (const action of ['finalize', 'pay', 'void']) {
    t.equal((await post(`/v1/invoices/${inv.id}/${action}`)).statusCode, 409, `paid → ${action}`)
  }
  const other = await draft()
  await post(`/v1/invoices/${other.id}/finalize`)
  const voided = await post(`/v1/invoices/${other.id}/void`)
  t.match(voided.json(), { status: 'void' })
  for (const action of ['finalize', 'pay', 'void']) {
    t.equal((await post(`/v1/invoices/${other.id}/${action}`)).statusCode, 409, `void → ${action}`)
  }
  t.equal((await post('/v1/invoices/0190a6d2-0000-7000-8000-000000000000/finalize')).statusCode, 404)
})

t.test('drafts can be edited, lines replaced and the amount recomputed', async (t) => {
  const inv = await draft()
  const res = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/invoices/${inv.id}`,
    payload: { lines: [line(4, 25)], memo: 'revised', due_date: null },
  }))
  t.equal(res.statusCode, 200)
  t.match(res.json(),
    { amount_cents: 100, memo: 'revised', due_date: null, lines: [{ quantity: 4, amount_cents: 100 }] })
  t.equal(res.json<Invoice>().lines.length, 1)
})

t.test('30 concurrent finalizes get 30 distinct, gap-free numbers', async (t) => {
  const fresh = await provisionTenant(ctx)
  const customerId = await customer(fresh)
  const drafts = await Promise.all(Array.from({ length: 30 }, () => draft(fresh, customerId)))
  // One extra finalize that fails (already open; refused before it reaches the counter) must not
  // burn a number either. A finalize rolled back after taking its number: the next test.
  const results = await Promise.all([
    ...drafts.map((d) => post(`/v1/invoices/${d.id}/finalize`, fresh)),
    post(`/v1/invoices/${drafts[0]!.id}/finalize`, fresh),
  ])
  const ok = results.filter((r) => r.statusCode === 200)
  t.equal(ok.length, 30)
  t.equal(results.filter((r) => r.statusCode === 409).length, 1)
  const numbers = ok.map((r) => r.json<Invoice>().number!).sort()
  t.same(numbers, Array.from({ length: 30 }, (_, i) => `INV-${String(i + 1).padStart(6, '0')}`))
  const next = await draft(fresh, customerId)
  t.match((await post(`/v1/invoices/${next.id}/finalize`, fresh)).json(), { number: 'INV-000031' })
})

async function waitFor (what: string, condition: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

t.test('a finalize rolled back after taking its number gives it back: the next finalize gets it', async (t) => {
  const fresh = await provisionTenant(ctx)
  const customerId = await customer(fresh)
  const first = await draft(fresh, customerId)
  t.match((await post(`/v1/invoices/${first.id}/finalize`, fresh)).json(), { number: 'INV-000001' })
  const abandoned = await draft(fresh, customerId)
  const next = await draft(fresh, customerId)
  const address = await ctx.app.listen({ host: '127.0.0.1', port: 0 })

  // The finalize locks the invoice, takes the number, updates the invoice, then appends its audit
  // event: holding the tenant's audit head stops it there, with its number taken.
  const locker = new pg.Client({ connectionString: ctx.db.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM audit_heads WHERE tenant_id = $1 FOR UPDATE', [fresh.id])
  const req = httpRequest(`${address}/v1/invoices/${abandoned.id}/finalize`, {
    method: 'POST', headers: { authorization: `Bearer ${fresh.key}` },
  })
  req.on('error', () => {})
  req.end()
  await waitFor('the finalize to block on its audit event', async () => {
    const { rows } = await locker.query(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))')
    return rows[0].n === 1
  })
  const counter = await query(ctx.db.adminUrl, 'SELECT 1 FROM invoice_counters WHERE tenant_id = $1 FOR UPDATE NOWAIT',
    [fresh.id]).then(() => 'free', (error: { code?: string }) => error.code)
  t.equal(counter, '55P03', 'the stuck finalize holds the counter: it has taken its number')

  // Its client gives up: the request is cancelled and rolled back, number included.
  req.destroy()
  const pool = ctx.app.dbPool
  await waitFor('the abandoned finalize to roll back', async () => pool.idleCount === pool.totalCount)
  await locker.query('COMMIT')
  const [row] = await query(ctx.db.adminUrl, 'SELECT status, number FROM invoices WHERE id = $1', [abandoned.id])
  t.same(row, { status: 'draft', number: null }, 'the abandoned finalize left the invoice a draft')
  const finalized = await post(`/v1/invoices/${next.id}/finalize`, fresh)
  t.match(finalized.json(), { number: 'INV-000002' }, 'the next finalize gets the number it had taken')
})

t.test('numbering is per tenant: interleaved finalizes of two tenants give each exactly 1..n', async (t) => {
  const [a, b] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  const drafts = async (who: ProvisionedTenant, n: number) => {
    const customerId = await customer(who)
    return Promise.all(Array.from({ length: n }, () => draft(who, customerId)))
  }
  const [ofA, ofB] = [await drafts(a, 12), await drafts(b, 9)]
  // A, B, A, B, ... one after the other: with one sequence shared by tenants, A would get 1, 3, 5, ...
  const order = Array.from({ length: 12 }, (_, i) => [[a, ofA[i]], [b, ofB[i]]] as const).flat()
    .filter(([, d]) => d !== undefined)
  const results: Array<Awaited<ReturnType<typeof post>>> = []
  for (const [who, d] of order) results.push(await post(`/v1/invoices/${d!.id}/finalize`, who))
  const numbers = (who: ProvisionedTenant) =>
    results.filter((_, i) => order[i]![0] === who).map((r) => r.json<Invoice>().number!)
  const expected = (n: number) => Array.from({ length: n }, (_, i) => `INV-${String(i + 1).padStart(6, '0')}`)
  t.same(numbers(a), expected(12), "tenant A's numbers are 1..12")
  t.same(numbers(b), expected(9), "tenant B's numbers are 1..9, whatever A did in between")
})

t.test('lists filter by status and customer and return every invoice exactly once', async (t) => {
  const fresh = await provisionTenant(ctx)
  const c1 = await customer(fresh)
  const c2 = await customer(fresh)
  const made: Invoice[] = []
  for (let i = 0; i < 5; i++) made.push(await draft(fresh, i % 2 === 0 ? c1 : c2))
  await post(`/v1/invoices/${made[1]!.id}/finalize`, fresh)
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const url: string = `/v1/invoices?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`
    const page = (await ctx.app.inject(as(fresh, { method: 'GET', url })))
      .json<{ data: Invoice[], next_cursor: string | null }>()
    seen.push(...page.data.map((i) => i.id))
    cursor = page.next_cursor
  } while (cursor !== null)
  t.same(seen, made.map((i) => i.id).reverse())
  const byCustomer = (await ctx.app.inject(as(fresh, { method: 'GET', url: `/v1/invoices?customer_id=${c1}` })))
    .json<{ data: Invoice[] }>()
  t.same(byCustomer.data.map((i) => i.id), [made[4]!.id, made[2]!.id, made[0]!.id])
  const open = (await ctx.app.inject(as(fresh, { method: 'GET', url: '/v1/invoices?status=open' })))
    .json<{ data: Invoice[] }>()
  t.same(open.data.map((i) => i.id), [made[1]!.id])
  t.equal(open.data[0]!.lines.length, 2, 'lists carry the lines')
  for (const bad of ['status=late', 'customer_id=nope', 'cursor=Zm9v']) {
    t.equal((await ctx.app.inject(as(fresh, { method: 'GET', url: `/v1/invoices?${bad}` }))).statusCode, 400, bad)
  }
})

t.test('a customer with invoices cannot be deleted (409), and can once they are gone', async (t) => {
  const customerId = await customer()
  await draft(tenant, customerId)
  const res = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${customerId}` }))
  t.equal(res.statusCode, 409)
  t.match(res.json(), { detail: 'the customer still has invoices' })
  const lonely = await customer()
  t.equal((await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${lonely}` }))).statusCode, 204)
})

t.test("another tenant's invoices are 404 for every operation", async (t) => {
  const mine = await draft()
  const other = await provisionTenant(ctx)
  t.equal((await ctx.app.inject(as(other, { method: 'GET', url: `/v1/invoices/${mine.id}` }))).statusCode, 404)
  const patched = await ctx.app.inject(as(other, {
    method: 'PATCH',
    url: `/v1/invoices/${mine.id}`,
    payload: { memo: 'x' },
  }))
  t.equal(patched.statusCode, 404)
  for (const action of ['finalize', 'pay', 'void']) {
    t.equal((await post(`/v1/invoices/${mine.id}/${action}`, other)).statusCode, 404, action)
  }
  const list = await ctx.app.inject(as(other, { method: 'GET', url: `/v1/invoices?customer_id=${mine.customer_id}` }))
  t.same(list.json<{ data: unknown[] }>().data, [])
  const [row] = await query<{ status: string }>(ctx.db.adminUrl, 'SELECT status FROM invoices WHERE id = $1', [mine.id])
  t.equal(row?.status, 'draft')
})

t.test('list items are written byte for byte as the same resource is written alone', async (t) => {
  // The invoice list is rendered by the database, every other response by the serializer: the raw
  // bytes must agree (no `"id" : ...` spacing, same field order, same escaping), not only the parsed values.
  const own = await provisionTenant(ctx)
  const buyer = await ctx.app.inject(as(own, {
    method: 'POST', url: '/v1/customers', payload: { name: 'Raw "bytes" \\ ünï 🧾', email: 'raw@example.com' },
  }))
  const odd = 'tab\tnewline\nquote" backslash\\ control\u0001 slash/ ünïcode 🧾'
  const payloads = [
    { lines: [line(1, 0)] },
    { lines: [line(3, 100), line(2, 250, odd)], memo: odd, due_date: '2026-12-31' },
  ]
  const ids: string[] = []
  for (const payload of payloads) {
    const res = await ctx.app.inject(as(own, {
      method: 'POST',
      url: '/v1/invoices',
      payload: { customer_id: buyer.json<{ id: string }>().id, currency: 'EUR', ...payload },
    }))
    ids.push(res.json<{ id: string }>().id)
  }
  await post(`/v1/invoices/${ids[1]!}/finalize`, own)
  const single = async (url: string): Promise<string> => (await ctx.app.inject(as(own, { method: 'GET', url }))).body
  const invoices = await ctx.app.inject(as(own, { method: 'GET', url: '/v1/invoices' }))
  const alone = await Promise.all([...ids].reverse().map(async (id) => single(`/v1/invoices/${id}`)))
  t.equal(invoices.body, `{"data":[${alone.join(',')}],"next_cursor":null}`, 'invoices')
  t.notMatch(invoices.body, /" :|, "/, 'no spacing anywhere')
  const customers = await ctx.app.inject(as(own, { method: 'GET', url: '/v1/customers' }))
  const customer = await single(`/v1/customers/${buyer.json<{ id: string }>().id}`)
  t.equal(customers.body, `{"data":[${customer}],"next_cursor":null}`, 'customers')
})
