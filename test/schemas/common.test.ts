import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

// PostgreSQL text cannot hold U+0000 (error 22021): a NUL byte from a client must be refused as a
// 400 before it reaches SQL, at every place the API accepts text.
const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)
const NUL = '\u0000'

const customer = (await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Ada' } })))
  .json<{ id: string }>()
const line = { description: 'work', quantity: 1, unit_amount_cents: 100 }

t.test('a NUL byte in any text field of a body is a 400 naming the field', async (t) => {
  const cases: Array<[string, 'POST' | 'PATCH', string, Record<string, unknown>, string]> = [
    ['customer name', 'POST', '/v1/customers', { name: `a${NUL}b` }, 'body/name'],
    ['customer external_ref', 'POST', '/v1/customers', { name: 'ok', external_ref: `r${NUL}` }, 'body/external_ref'],
    ['customer name on update', 'PATCH', `/v1/customers/${customer.id}`, { name: NUL }, 'body/name'],
    [
      'customer external_ref on update', 'PATCH', `/v1/customers/${customer.id}`, { external_ref: `${NUL}x` },
      'body/external_ref',
    ],
    ['member user_id', 'POST', '/v1/members', { user_id: `auth0|${NUL}`, role: 'member' }, 'body/user_id'],
    ['API key name', 'POST', '/v1/api-keys', { name: `ci${NUL}`, scopes: ['read'] }, 'body/name'],
    [
      'invoice line description', 'POST', '/v1/invoices',
      { customer_id: customer.id, currency: 'EUR', lines: [{ ...line, description: `a${NUL}` }] },
      'body/lines/0/description',
    ],
    [
      'invoice memo', 'POST', '/v1/invoices', { customer_id: customer.id, currency: 'EUR', lines: [line], memo: NUL },
      'body/memo',
    ],
  ]
  for (const [name, method, url, payload, path] of cases) {
    const res = await ctx.app.inject(as(tenant, { method, url, payload }))
    t.equal(res.statusCode, 400, name)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', name)
    t.match(res.json(), { status: 400, errors: [{ path, message: 'must not contain a NUL character' }] }, name)
  }
  const [stored] = await query<{ n: number }>(ctx.db.adminUrl,
    "SELECT count(*)::int AS n FROM customers WHERE name LIKE 'a%b' OR name = 'ok'")
  t.equal(stored?.n, 0, 'nothing was written')
})

t.test('a NUL byte in a path parameter or the query string is a 400', async (t) => {
  const member = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/%00' }))
  t.equal(member.statusCode, 400)
  t.match(member.json(), { errors: [{ path: 'params/user_id', message: 'must not contain a NUL character' }] })
  const inside = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/auth0%7C%00x' }))
  t.equal(inside.statusCode, 400, 'also in the middle of the value')
  const cursor = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/customers?cursor=%00' }))
  t.equal(cursor.statusCode, 400)
})

t.test("a NUL byte in a tenant's name or slug is a 400 naming the field, for the operator too", async (t) => {
  const res = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    payload: { name: `Acme${NUL}`, slug: 'nul-tenant' },
  })
  t.equal(res.statusCode, 400)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(res.json(), { status: 400, errors: [{ path: 'body/name', message: 'must not contain a NUL character' }] },
    'refused by the schema, naming the field')
  t.notMatch(res.body, /22021|UTF8|byte sequence/, 'nothing from the database in the response')
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM tenants WHERE slug = 'nul-tenant'"), [], 'no tenant was created')
  const slug = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    payload: { name: 'Acme', slug: `nul${NUL}` },
  })
  t.equal(slug.statusCode, 400)
  t.match(slug.json(), { status: 400, errors: [{ path: 'body/slug' }] }, 'the slug pattern admits no NUL')
})

t.test('a JWT whose sub holds a NUL byte is a 401, with or without a tenant claim', async (t) => {
  for (const claims of [{ sub: `ada${NUL}`, tid: tenant.id }, { sub: `${NUL}` }]) {
    const res = await ctx.app.inject({
      method: 'GET',
      url: '/v1/tenant',
      headers: { authorization: `Bearer ${signUserToken({ ...claims, exp: inAnHour() })}` },
    })
    t.equal(res.statusCode, 401, JSON.stringify(claims))
    t.match(res.json(), { status: 401, detail: 'the token is invalid' })
  }
})
