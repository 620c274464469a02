import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { addMember } from '../helpers/members.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

// Every error is application/problem+json (docs/api.md), including the ones Fastify and Node raise
// before any route, hook or handler runs, and none names Fastify's internal error codes.
const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)

interface Problem { type: string, title: string, status: number, detail?: string }

function assertProblem (
  t: Test,
  res: { statusCode: number, headers: Record<string, unknown>, body: string },
  status: number,
  name: string
): void {
  t.equal(res.statusCode, status, name)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', name)
  const problem = JSON.parse(res.body) as Problem
  t.equal(problem.status, status, name)
  t.match(problem.type, /^https:\/\/rowfence\.dev\/problems\//, name)
  t.notMatch(res.body, /FST_|"code"|statusCode|Error:/, `${name}: no internal code or name`)
}

t.test('framework errors before any route runs are problem+json', async (t) => {
  const cases: Array<[string, string, number]> = [
    ['malformed percent-encoding on a tenant route', '/v1/customers/%zz', 400],
    ['malformed percent-encoding on an operator route', '/admin/v1/tenants/%zz', 400],
    ['malformed percent-encoding outside any route', '/%zz', 400],
    ['a path parameter over the maximum length', `/v1/customers/${'a'.repeat(1000)}`, 414],
  ]
  for (const [name, url, status] of cases) {
    const res = await ctx.app.inject(as(tenant, { method: 'GET', url, headers: { 'x-request-id': 'framework-error' } }))
    assertProblem(t, res, status, name)
    t.equal(res.headers['x-request-id'], 'framework-error', `${name}: the request id is echoed`)
  }
})

t.test('content-type, malformed JSON and size errors are problem+json', async (t) => {
  const json = { 'content-type': 'application/json' }
  const cases: Array<[string, Record<string, string>, string, number]> = [
    ['a text/plain body', { 'content-type': 'text/plain' }, 'name=x', 415],
    ['an unknown content type', { 'content-type': 'application/x-www-form-urlencoded' }, 'name=x', 415],
    ['malformed JSON', json, '{"name": ', 400],
    ['an empty JSON body', json, '', 400],
    ['a prototype-poisoning body', json, '{"__proto__": {"x": 1}, "name": "p"}', 400],
    ['a body over the limit', json, JSON.stringify({ name: 'x'.repeat(1024 * 1024) }), 413],
  ]
  for (const [name, headers, payload, status] of cases) {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', headers, payload }))
    assertProblem(t, res, status, name)
  }
  const admin = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}`, ...json },
    payload: '{',
  })
  assertProblem(t, admin, 400, 'malformed JSON on an operator route')
})

t.test('an empty JSON body on an operation that takes none is no body; ' +
  'where a body is needed it is a 400', async (t) => {
  const json = { 'content-type': 'application/json' }
  const send = async (method: 'POST' | 'DELETE' | 'PATCH', url: string, by: { key: string } = tenant) =>
    ctx.app.inject(as(by, { method, url, headers: json, payload: '' }))
  const post = async (url: string, payload: Record<string, unknown>) => {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url, payload }))
    t.equal(res.statusCode, 201, res.body)
    return res.json<{ id: string }>()
  }
  const customer = await post('/v1/customers', { name: 'Empty body' })
  const line = { description: 'x', quantity: 1, unit_amount_cents: 100 }
  const invoice = async () => post('/v1/invoices', { customer_id: customer.id, currency: 'EUR', lines: [line] })
  const paid = await invoice()
  t.equal((await send('POST', `/v1/invoices/${paid.id}/finalize`)).json<{ status: string }>().status, 'open',
    'finalize')
  t.equal((await send('POST', `/v1/invoices/${paid.id}/pay`)).json<{ status: string }>().status, 'paid', 'pay')
  const voided = await invoice()
  await send('POST', `/v1/invoices/${voided.id}/finalize`)
  t.equal((await send('POST', `/v1/invoices/${voided.id}/void`)).json<{ status: string }>().status, 'void', 'void')
  const spare = await post('/v1/customers', { name: 'Deleted' })
  t.equal((await send('DELETE', `/v1/customers/${spare.id}`)).statusCode, 204, 'DELETE')
  const member = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/members',
    payload: { user_id: 'empty-body-user', role: 'viewer' },
  }))
  t.equal(member.statusCode, 201)
  const user = { key: signUserToken({ sub: 'empty-body-user', exp: inAnHour() }) }
  const accepted = await ctx.app.inject(as(user, {
    method: 'POST',
    url: '/v1/membership/accept',
    headers: { ...json, 'x-tenant-id': tenant.id },
    payload: '',
  }))
  t.equal(accepted.statusCode, 200, `membership accept: ${accepted.body}`)

  // Operations that need a body still refuse an empty one, with what is wrong.
  const needBody = [
    ['POST', '/v1/customers'], ['PATCH', `/v1/customers/${customer.id}`], ['POST', '/v1/invoices'],
  ] as const
  for (const [method, url] of needBody) {
    const res = await send(method, url)
    assertProblem(t, res, 400, `${method} ${url}`)
    t.equal(res.json<Problem>().detail, 'the JSON body is empty', `${method} ${url}: says why`)
  }
  assertProblem(t, await send('POST', `/v1/invoices/${paid.id}/pay`), 409,
    'an empty body changes nothing else: paying twice is a 409')
  // A body whose every property is optional: an empty one is {}.
  const ownerKey = await ctx.app.inject({
    method: 'POST',
    url: `/admin/v1/tenants/${tenant.id}/api-keys`,
    headers: { authorization: `Bearer ${ctx.adminToken}`, ...json },
    payload: '',
  })
  t.equal(ownerKey.statusCode, 201, `an owner key with an empty body: ${ownerKey.body}`)
})

t.test('a user_id as long as the schema allows still routes, percent-encoded', async (t) => {
  const userId = '|'.repeat(255) // 765 characters once encoded
  const added = await addMember(ctx, tenant, { user_id: userId, role: 'viewer' })
  t.equal(added.statusCode, 201)
  const removed = await ctx.app.inject(as(tenant, {
    method: 'DELETE',
    url: `/v1/members/${encodeURIComponent(userId)}`,
  }))
  t.equal(removed.statusCode, 204)
})

/** Sends raw bytes to the listening server and returns the raw response. */
async function raw (port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let response = ''
    socket.on('data', (chunk) => { response += chunk.toString() })
    socket.on('error', reject)
    socket.on('close', () => { resolve(response) })
    socket.end(request)
  })
}

t.test('requests the HTTP parser refuses are problem+json too', async (t) => {
  const server = await buildTestApp(t, {}, ctx.db)
  await server.app.listen({ host: '127.0.0.1', port: 0 })
  const port = (server.app.server.address() as { port: number }).port
  const cases: Array<[string, string, number]> = [
    ['a malformed request line', 'GARBAGE\r\n\r\n', 400],
    ['a malformed header', 'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n', 400],
    ['headers over the size limit', `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
  ]
  for (const [name, request, status] of cases) {
    const response = await raw(port, request)
    const [head = '', body = ''] = response.split('\r\n\r\n')
    t.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), name)
    t.match(head, /content-type: application\/problem\+json; charset=utf-8/i, name)
    t.match(JSON.parse(body), { status, type: /^https:\/\/rowfence\.dev\/problems\// }, name)
    t.notMatch(body, /Client Error|statusCode/, `${name}: not Fastify's default body`)
  }
})
