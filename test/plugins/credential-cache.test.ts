import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

const a = await buildTestApp(t)
const b = await buildTestApp(t, {}, a.db) // a second server instance on the same database

async function roundTrips (app: typeof a.app, work: () => Promise<unknown>): Promise<number> {
  const before = app.dbTraffic.roundTrips
  await work()
  await new Promise((resolve) => setTimeout(resolve, 20)) // the read-only COMMIT completes behind the response
  return app.dbTraffic.roundTrips - before
}

t.test("a recently verified key sends the handler's query in the same flight as BEGIN and the binding", async (t) => {
  const tenant = await provisionTenant(a)
  const customer = (await a.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'C' } }))).json<{ id: string }>()
  const fresh = await buildTestApp(t, {}, a.db)
  await fresh.app.ready() // the catalog read at start-up is not a request's
  const get = () => fresh.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  const first = await roundTrips(fresh.app, get)
  const second = await roundTrips(fresh.app, get)
  t.equal(first, 3, 'uncached: BEGIN + binding, then the query, then COMMIT')
  t.equal(second, 2, 'cached: BEGIN + binding + query together, then COMMIT')
  const off = await buildTestApp(t, { CREDENTIAL_CACHE_TTL_MS: 0 }, a.db)
  await off.app.ready()
  await off.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.equal(await roundTrips(off.app, () => off.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))), 3, 'with the cache off, every request waits for its check')
})

t.test('a key revoked on one instance fails its very next request on another that had it cached', async (t) => {
  const tenant = await provisionTenant(a)
  const key = (await a.app.inject(as(tenant, { method: 'POST', url: '/v1/api-keys', payload: { name: 'k', scopes: ['read', 'write'] } }))).json<{ id: string, key: string }>()
  for (let i = 0; i < 2; i++) t.equal((await b.app.inject(as(key, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200, 'cached on b')
  t.equal((await a.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${key.id}` }))).statusCode, 204, 'revoked on a')
  t.equal((await b.app.inject(as(key, { method: 'GET', url: '/v1/tenant' }))).statusCode, 401, 'refused on b at once')
})

t.test('a write sent ahead on a cached key that was revoked is rolled back', async (t) => {
  const tenant = await provisionTenant(a)
  const key = (await a.app.inject(as(tenant, { method: 'POST', url: '/v1/api-keys', payload: { name: 'k', scopes: ['read', 'write'] } }))).json<{ id: string, key: string }>()
  await b.app.inject(as(key, { method: 'GET', url: '/v1/tenant' }))
  await query(a.db.adminUrl, 'UPDATE api_keys SET revoked_at = now() WHERE id = $1', [key.id])
  const res = await b.app.inject(as(key, { method: 'POST', url: '/v1/customers', payload: { name: 'ghost' } }))
  t.equal(res.statusCode, 401)
  t.same(await query(a.db.adminUrl, "SELECT 1 FROM customers WHERE name = 'ghost'"), [], 'nothing was written')
})

t.test('a membership removed elsewhere is refused at once, even while cached', async (t) => {
  const tenant = await provisionTenant(a)
  await a.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: 'temp', role: 'member' } }))
  const headers = { authorization: `Bearer ${signUserToken({ sub: 'temp', tid: tenant.id, exp: inAnHour() })}` }
  t.equal((await b.app.inject({ method: 'GET', url: '/v1/tenant', headers })).statusCode, 200)
  await a.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/temp' }))
  t.equal((await b.app.inject({ method: 'GET', url: '/v1/tenant', headers })).statusCode, 403)
})

t.test('a tenant moved by another instance is read correctly through a stale cache', async (t) => {
  const tenant = await provisionTenant(a)
  const customer = (await a.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Moved' } }))).json<{ id: string }>()
  const before = await b.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.equal(before.statusCode, 200)
  const moved = await a.app.inject({ method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/placement`, headers: { authorization: `Bearer ${a.adminToken}` }, payload: { placement: 'dedicated' } })
  t.equal(moved.statusCode, 200)
  const after = await b.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.equal(after.statusCode, 200, 'replayed without the stale guess')
  t.equal(after.body, before.body)
  const write = await b.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'after move' } }))
  t.equal(write.statusCode, 201)
})
