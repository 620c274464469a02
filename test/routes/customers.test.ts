import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)

interface Customer {
  id: string,
  name: string,
  email: string | null,
  external_ref: string | null,
  created_at: string,
  updated_at: string,
}

t.test('create, read, update and delete a customer', async (t) => {
  const created = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'Ada', email: 'ada@example.com' },
  }))
  t.equal(created.statusCode, 201)
  const customer = created.json<Customer>()
  t.match(customer, { name: 'Ada', email: 'ada@example.com', external_ref: null })
  t.match(customer.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/, 'a UUIDv7 id')
  t.same(Object.keys(customer).sort(), ['created_at', 'email', 'external_ref', 'id', 'name', 'updated_at'],
    'no extra fields (no tenant_id)')

  const read = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.same(read.json(), customer)

  const patched = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/customers/${customer.id}`,
    payload: { email: null, external_ref: 'crm-1' },
  }))
  t.equal(patched.statusCode, 200)
  t.match(patched.json<Customer>(), { name: 'Ada', email: null, external_ref: 'crm-1' })
  t.ok(patched.json<Customer>().updated_at >= customer.updated_at)

  const deleted = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${customer.id}` }))
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  const gone = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.equal(gone.statusCode, 404)
  const again = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${customer.id}` }))
  t.equal(again.statusCode, 404)
})

t.test('pagination returns every customer exactly once, newest first', async (t) => {
  const other = await provisionTenant(ctx)
  const made: string[] = []
  for (let i = 0; i < 7; i++) {
    const res = await ctx.app.inject(as(other, { method: 'POST', url: '/v1/customers', payload: { name: `c${i}` } }))
    made.push(res.json<Customer>().id)
  }
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `/v1/customers?limit=3${cursor === null ? '' : `&cursor=${cursor}`}`
    const res = await ctx.app.inject(as(other, { method: 'GET', url }))
    t.equal(res.statusCode, 200)
    const page = res.json<{ data: Customer[], next_cursor: string | null }>()
    t.ok(page.data.length <= 3)
    seen.push(...page.data.map((c) => c.id))
    cursor = page.next_cursor
    pages++
  } while (cursor !== null)
  t.equal(pages, 3)
  t.same(seen, [...made].reverse(), 'all seven, newest first, no repeats')
})

t.test('list limits and cursors are validated', async (t) => {
  const urls = [
    '/v1/customers?limit=0', '/v1/customers?limit=201', '/v1/customers?limit=abc',
    '/v1/customers?cursor=bm90LWEtY3Vyc29y', '/v1/customers?cursor=%00%ff', '/v1/customers?color=red',
  ]
  for (const url of urls) {
    const res = await ctx.app.inject(as(tenant, { method: 'GET', url }))
    t.equal(res.statusCode, 400, url)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', url)
  }
})

t.test('bodies are typed strictly and unknown fields are rejected', async (t) => {
  const cases: Array<[unknown, string]> = [
    [{}, 'body/name'],
    [{ name: '' }, 'body/name'],
    [{ name: 'x'.repeat(201) }, 'body/name'],
    [{ name: 5 }, 'body/name'],
    [{ name: null }, 'body/name'],
    [{ name: true }, 'body/name'],
    [{ name: 'ok', email: 'not-an-email' }, 'body/email'],
    [{ name: 'ok', tenant_id: tenant.id }, 'body/tenant_id'],
    [{ name: 'ok', id: '0190a6d2-0000-7000-8000-000000000000' }, 'body/id'],
    [[{ name: 'array' }], 'body'],
  ]
  for (const [payload, path] of cases) {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: payload as object }))
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    const problem = res.json<{ status: number, errors: Array<{ path: string, message: string }> }>()
    t.equal(problem.status, 400)
    t.ok(problem.errors.some((e) => e.path === path), `${JSON.stringify(payload)} names ${path}`)
  }
  const empty = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: '/v1/customers/0190a6d2-0000-7000-8000-000000000000',
    payload: {},
  }))
  t.equal(empty.statusCode, 400, 'a PATCH must change something')
})

t.test('malformed requests get a problem, never a 500', async (t) => {
  const json = { 'content-type': 'application/json' }
  const cases = [
    { method: 'POST' as const, url: '/v1/customers', headers: json, payload: '{"name": ', status: 400 },
    { method: 'POST' as const, url: '/v1/customers', headers: json, payload: '', status: 400 },
    {
      method: 'POST' as const,
      url: '/v1/customers',
      headers: { 'content-type': 'text/plain' },
      payload: 'name=x',
      status: 415,
    },
    {
      method: 'POST' as const,
      url: '/v1/customers',
      headers: json,
      payload: '{"__proto__": {"x": 1}, "name": "p"}',
      status: 400,
    },
    {
      method: 'POST' as const,
      url: '/v1/customers',
      headers: json,
      payload: JSON.stringify({ name: 'x'.repeat(1024 * 1024) }),
      status: 413,
    },
    { method: 'GET' as const, url: '/v1/customers/not-a-uuid', status: 400 },
    { method: 'PUT' as const, url: '/v1/customers', status: 404 },
  ]
  for (const c of cases) {
    const res = await ctx.app.inject(as(tenant, c))
    t.equal(res.statusCode, c.status, `${c.method} ${c.url} ${String(c.payload ?? '').slice(0, 30)}`)
    const problem = res.json<{ type: string, title: string, status: number }>()
    t.equal(problem.status, c.status)
    t.match(problem.type, /^https:\/\/rowfence\.dev\/problems\//)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  }
})

t.test('x-tenant-id must be exactly one UUID', async (t) => {
  for (const value of ['', 'nope', `${tenant.id}, ${tenant.id}`]) {
    const res = await ctx.app.inject(as(tenant, {
      method: 'GET',
      url: '/v1/customers',
      headers: { 'x-tenant-id': value },
    }))
    t.equal(res.statusCode, 400, JSON.stringify(value))
  }
  const repeated = await ctx.app.inject({
    method: 'GET',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${tenant.key}`, 'x-tenant-id': [tenant.id, tenant.id] },
  })
  t.equal(repeated.statusCode, 400, 'a repeated header')
  const matching = await ctx.app.inject(as(tenant, {
    method: 'GET',
    url: '/v1/customers',
    headers: { 'x-tenant-id': tenant.id.toUpperCase() },
  }))
  t.equal(matching.statusCode, 200, 'the own tenant id, in any case, is fine')
})
