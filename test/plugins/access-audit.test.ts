import { PassThrough } from 'node:stream'
import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { addMember } from '../helpers/members.ts'

// Access decisions are logged with the request id, a public credential prefix and the reason,
// and never with the secret.
const lines: Array<Record<string, unknown>> = []
const stream = new PassThrough()
stream.on('data', (chunk: Buffer) => {
  for (const line of chunk.toString().split('\n')) {
    if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  }
})
const ctx = await buildTestApp(t, { LOG_LEVEL: 'info' }, undefined, { logStream: stream })
const acme = await provisionTenant(ctx)
const other = await provisionTenant(ctx)

function denials (requestId: string): Array<Record<string, unknown>> {
  return lines.filter((l) => l.reqId === requestId && l.event === 'access_denied')
}

t.test('a wrong secret is logged with the key prefix and the reason, not the key', async (t) => {
  const forged = acme.key.slice(0, 48) + 'A'.repeat(43)
  const { crc32 } = await import('node:zlib')
  const sum = Buffer.alloc(4)
  sum.writeUInt32BE(crc32(forged))
  const key = forged + sum.toString('base64url')
  const res = await ctx.app.inject({
    method: 'GET',
    url: '/v1/tenant',
    headers: { authorization: `Bearer ${key}`, 'x-request-id': 'audit-wrong-secret' },
  })
  t.equal(res.statusCode, 401)
  const [entry] = denials('audit-wrong-secret')
  t.match(entry, { status: 401, reason: 'wrong API key secret', credentialPrefix: acme.key.slice(0, 26) })
  t.notOk(JSON.stringify(lines).includes(key.slice(30)), 'no secret in any log line')
  t.notOk(JSON.stringify(lines).includes(acme.key.slice(30)), 'nor the real key')
})

t.test('a denied tenant switch is logged with the tenant asked for', async (t) => {
  const res = await ctx.app.inject(as(acme, {
    method: 'GET',
    url: '/v1/tenant',
    headers: { 'x-tenant-id': other.id, 'x-request-id': 'audit-switch' },
  }))
  t.equal(res.statusCode, 403)
  t.match(denials('audit-switch')[0], { status: 403, reason: 'tenant switch denied', requestedTenant: other.id })
})

t.test('a missing credential is logged', async (t) => {
  await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: { 'x-request-id': 'audit-none' } })
  t.match(denials('audit-none')[0], { status: 401, reason: 'missing credentials' })
})

t.test('an operator token on a tenant route is refused and logged, without the token', async (t) => {
  const res = await ctx.app.inject({
    method: 'GET',
    url: '/v1/tenant',
    headers: { authorization: `Bearer ${ctx.adminToken}`, 'x-request-id': 'audit-operator-on-tenant' },
  })
  t.equal(res.statusCode, 401)
  const [entry] = denials('audit-operator-on-tenant')
  t.match(entry, { status: 401, reason: 'unrecognised credential' })
  t.equal(entry?.credentialPrefix, undefined, 'no prefix of an operator token')
})

t.test('a tenant API key on an operator route is refused and logged with its public prefix only', async (t) => {
  const res = await ctx.app.inject({
    method: 'GET',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${acme.key}`, 'x-request-id': 'audit-key-on-admin' },
  })
  t.equal(res.statusCode, 401)
  t.match(denials('audit-key-on-admin')[0], {
    status: 401,
    reason: 'tenant API key on an operator route',
    credentialPrefix: acme.key.slice(0, 26),
  })
  t.notOk(JSON.stringify(lines).includes(acme.key.slice(30)), 'not the secret part of the key')
})

t.test('the operator token is never logged, not even on failing requests', async (t) => {
  const operator = { authorization: `Bearer ${ctx.adminToken}` }
  const failing: Array<[string, Record<string, unknown>, number]> = [
    ['audit-op-tenant-route', { method: 'POST', url: '/v1/customers', payload: { name: 'x' } }, 401],
    ['audit-op-bad-id', { method: 'GET', url: '/admin/v1/tenants/not-a-uuid' }, 400],
    ['audit-op-bad-body', { method: 'POST', url: '/admin/v1/tenants', payload: { name: '', slug: 'A' } }, 400],
    ['audit-op-unknown', { method: 'GET', url: '/admin/v1/tenants/0190a6d2-0000-7000-8000-000000000000' }, 404],
    [
      'audit-op-token-variant',
      { method: 'GET', url: '/admin/v1/tenants', headers: { authorization: `Bearer ${ctx.adminToken}x` } },
      401,
    ],
  ]
  for (const [requestId, options, status] of failing) {
    const res = await ctx.app.inject({
      ...options,
      headers: { ...operator, ...(options.headers as Record<string, string> | undefined), 'x-request-id': requestId },
    })
    t.equal(res.statusCode, status, requestId)
    t.ok(lines.some((l) => l.reqId === requestId), `${requestId}: the request was logged (so the capture works)`)
  }
  const logged = JSON.stringify(lines)
  t.notOk(logged.includes(ctx.adminToken), 'the operator token appears in no log line')
  t.notOk(logged.includes(ctx.adminToken.slice(0, 16)), 'nor any recognisable part of it')
})

t.test('refusals of the owner rule and of rights a credential cannot hand on are logged', async (t) => {
  const { inAnHour, signUserToken } = await import('../helpers/tokens.ts')
  for (const [id, role] of [['audit-boss', 'owner'], ['audit-adm', 'admin']]) {
    await addMember(ctx, acme, { user_id: id, role })
  }
  const adm = { authorization: `Bearer ${signUserToken({ sub: 'audit-adm', tid: acme.id, exp: inAnHour() })}` }
  const cases: Array<[string, Record<string, unknown>, string]> = [
    [
      'audit-add-owner',
      { method: 'POST', url: '/v1/members', payload: { user_id: 'audit-new', role: 'owner' } },
      'adding an owner needs owner rights',
    ],
    ['audit-remove-owner', { method: 'DELETE', url: '/v1/members/audit-boss' }, 'removing an owner needs owner rights'],
    [
      'audit-revoke-owner-key',
      { method: 'DELETE', url: `/v1/api-keys/${acme.keyId}` },
      'revoking an owner key needs owner rights',
    ],
  ]
  for (const [requestId, options, reason] of cases) {
    const res = await ctx.app.inject({ ...options, headers: { ...adm, 'x-request-id': requestId } })
    t.equal(res.statusCode, 403, reason)
    t.match(denials(requestId),
      [{ event: 'access_denied', status: 403, reason, credentialPrefix: 'jwt:audit-adm' }], reason)
  }
  const narrow = await ctx.app.inject(as(acme, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'r', scopes: ['read', 'admin'] },
  }))
  const key = narrow.json<{ key: string, prefix: string }>()
  const wider = await ctx.app.inject(as(key, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'w', scopes: ['write'] },
    headers: { 'x-request-id': 'audit-wider-key' },
  }))
  t.equal(wider.statusCode, 403)
  t.match(denials('audit-wider-key'),
    [{ status: 403, reason: "key scopes beyond the credential's", credentialPrefix: key.prefix }])
  t.notOk(JSON.stringify(lines).includes(key.key.slice(30)), 'no secret in any log line')
})
