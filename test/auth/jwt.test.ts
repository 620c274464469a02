import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'
import { inAnHour, signUserToken, unsignedToken } from '../helpers/tokens.ts'
import { addMember as addAcceptedMember } from '../helpers/members.ts'

const ctx = await buildTestApp(t)
const acme = await provisionTenant(ctx, 'acme')
const globex = await provisionTenant(ctx, 'globex')

async function addMember (c: TestApp, tenant: { key: string }, userId: string, role: string): Promise<void> {
  const res = await addAcceptedMember(c, tenant, { user_id: userId, role })
  if (res.statusCode !== 201) throw new Error(`adding member failed: ${res.body}`)
}

await addMember(ctx, acme, 'ada', 'admin')
await addMember(ctx, acme, 'vic', 'viewer')
await addMember(ctx, acme, 'mel', 'member')
await addMember(ctx, acme, 'twin', 'member')
await addMember(ctx, globex, 'twin', 'viewer')

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })
const get = (url: string, headers: Record<string, string>) => ctx.app.inject({ method: 'GET', url, headers })

t.test('a member with a tid claim reaches that tenant', async (t) => {
  const res = await get('/v1/tenant', bearer(signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() })))
  t.equal(res.statusCode, 200)
  t.equal(res.json<{ id: string }>().id, acme.id)
})

t.test('every forged, expired or incomplete token is a 401', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const cases: Array<[string, string, RegExp]> = [
    ['expired', signUserToken({ sub: 'ada', tid: acme.id, exp: now - 60 }), /expired/],
    [
      'wrong signature',
      signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() }, { key: 'another-secret-another-secret-12345' }),
      /invalid/,
    ],
    ['alg none', unsignedToken({ sub: 'ada', tid: acme.id, exp: inAnHour() }), /invalid/],
    ['no exp', signUserToken({ sub: 'ada', tid: acme.id }), /invalid/],
    ['no sub', signUserToken({ tid: acme.id, exp: inAnHour() }), /invalid/],
    ['tid not a uuid', signUserToken({ sub: 'ada', tid: 'acme', exp: inAnHour() }), /invalid/],
    ['truncated', signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() }).slice(0, -5), /invalid/],
  ]
  for (const [name, token, detail] of cases) {
    const res = await get('/v1/tenant', bearer(token))
    t.equal(res.statusCode, 401, name)
    t.match(res.json<{ detail: string }>().detail, detail, name)
  }
})

t.test('a token that expired within the clock tolerance still works', async (t) => {
  const exp = Math.floor(Date.now() / 1000) - 1
  const res = await get('/v1/tenant', bearer(signUserToken({ sub: 'ada', tid: acme.id, exp })))
  t.equal(res.statusCode, 200)
})

t.test('a user who is not a member gets 403 before any tenant data is read', async (t) => {
  // The same database through an app that reports every statement sent on the runtime connections.
  const statements: string[] = []
  const observed = await buildTestApp(t, {}, ctx.db, { onQuery: (text) => { statements.push(text) } })
  await observed.app.ready()
  const tables = [...observed.app.tenantTables.keys()]
  const readsTenantData = (sql: string): boolean =>
    tables.some((name) => new RegExp(`"${name}"|\\b${name}\\b`).test(sql))
  const send = async (url: string, claims: Record<string, unknown>) => {
    statements.length = 0
    const res = await observed.app.inject({
      method: 'GET',
      url,
      headers: bearer(signUserToken({ ...claims, exp: inAnHour() })),
    })
    return { res, sent: [...statements] }
  }

  const member = await send('/v1/customers', { sub: 'ada', tid: acme.id })
  t.equal(member.res.statusCode, 200)
  t.ok(member.sent.some(readsTenantData), 'a member\'s request reads the customers (the observer sees such reads)')

  const outsider = await send('/v1/customers', { sub: 'ada', tid: globex.id })
  t.equal(outsider.res.statusCode, 403)
  t.match(outsider.res.json(), { detail: 'you are not a member of this tenant' })
  t.ok(outsider.sent.length > 0, 'the membership was checked in the database')
  t.same(outsider.sent.filter(readsTenantData), [], 'no statement of the refused request reads a tenant table')

  const stranger = await send('/v1/customers', { sub: 'stranger' })
  t.equal(stranger.res.statusCode, 403, 'a user with no membership at all')
  t.same(stranger.sent.filter(readsTenantData), [], 'nor for a user with no membership: only the directory lookup ran')
  t.ok(stranger.sent.some((sql) => /user_tenant_ids/.test(sql)))
})

t.test('x-tenant-id chooses among the tenants a user belongs to', async (t) => {
  const token = signUserToken({ sub: 'twin', tid: acme.id, exp: inAnHour() })
  const res = await get('/v1/tenant', { ...bearer(token), 'x-tenant-id': globex.id })
  t.equal(res.statusCode, 200)
  t.equal(res.json<{ id: string }>().id, globex.id, 'the header wins over the tid claim')
  const notMine = await get('/v1/tenant', {
    ...bearer(signUserToken({ sub: 'ada', exp: inAnHour() })),
    'x-tenant-id': globex.id,
  })
  t.equal(notMine.statusCode, 403, 'but only for tenants the user is a member of')
})

t.test('a token that names no tenant works for a user with exactly one', async (t) => {
  const one = await get('/v1/tenant', bearer(signUserToken({ sub: 'ada', exp: inAnHour() })))
  t.equal(one.statusCode, 200)
  t.equal(one.json<{ id: string }>().id, acme.id)
  const several = await get('/v1/tenant', bearer(signUserToken({ sub: 'twin', exp: inAnHour() })))
  t.equal(several.statusCode, 400)
  t.match(several.json(), { errors: [{ path: 'headers/x-tenant-id' }] })
})

t.test('member roles map to scopes', async (t) => {
  const token = (sub: string): Record<string, string> => bearer(signUserToken({ sub, tid: acme.id, exp: inAnHour() }))
  const post = (sub: string) =>
    ctx.app.inject({ method: 'POST', url: '/v1/customers', headers: token(sub), payload: { name: `by ${sub}` } })
  t.equal((await get('/v1/customers', token('vic'))).statusCode, 200, 'viewer reads')
  t.equal((await post('vic')).statusCode, 403, 'viewer cannot write')
  t.equal((await post('mel')).statusCode, 201, 'member writes')
  t.equal((await get('/v1/api-keys', token('mel'))).statusCode, 403, 'member has no admin scope')
  t.equal((await get('/v1/api-keys', token('ada'))).statusCode, 200, 'admin has')
})

t.test('removing a membership takes effect on the next request', async (t) => {
  await addMember(ctx, acme, 'leaver', 'member')
  const token = bearer(signUserToken({ sub: 'leaver', tid: acme.id, exp: inAnHour() }))
  t.equal((await get('/v1/tenant', token)).statusCode, 200)
  const removed = await ctx.app.inject(as(acme, { method: 'DELETE', url: '/v1/members/leaver' }))
  t.equal(removed.statusCode, 204)
  t.equal((await get('/v1/tenant', token)).statusCode, 403)
})

t.test('user tokens never open operator routes', async (t) => {
  const res = await get('/admin/v1/tenants', bearer(signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() })))
  t.equal(res.statusCode, 401)
})

t.test('RS256: the algorithm is pinned, so an HS256 token signed with the public key is refused', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const rs = await buildTestApp(t, { jwt: { algorithm: 'RS256', key: publicPem } }, ctx.db)
  const good = signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() }, { key: privatePem, algorithm: 'RS256' })
  t.equal((await rs.app.inject({ method: 'GET', url: '/v1/tenant', headers: bearer(good) })).statusCode, 200)
  const confused = signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() }, { key: publicPem })
  t.equal((await rs.app.inject({ method: 'GET', url: '/v1/tenant', headers: bearer(confused) })).statusCode, 401)
  const hs = signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() })
  t.equal((await rs.app.inject({ method: 'GET', url: '/v1/tenant', headers: bearer(hs) })).statusCode, 401)
})

t.test('without JWT configuration, tokens are refused', async (t) => {
  const off = await buildTestApp(t, { jwt: undefined }, ctx.db)
  const res = await off.app.inject({
    method: 'GET',
    url: '/v1/tenant',
    headers: bearer(signUserToken({ sub: 'ada', tid: acme.id, exp: inAnHour() })),
  })
  t.equal(res.statusCode, 401)
  t.equal((await off.app.inject(as(acme, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200, 'API keys still work')
})
