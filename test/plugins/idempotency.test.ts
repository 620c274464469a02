import t from 'tap'
import { canonicalJson } from '../../src/plugins/app/idempotency.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t, { DB_POOL_MAX: 6 })
const tenant = await provisionTenant(ctx)

const create = (key: string | undefined, payload: Record<string, unknown>, who = tenant) => ctx.app.inject(as(who, {
  method: 'POST', url: '/v1/customers', payload, headers: key === undefined ? {} : { 'idempotency-key': key },
}))
const countNamed = async (name: string): Promise<number> => {
  const rows = await query<{ n: number }>(ctx.db.adminUrl,
    'SELECT count(*)::int AS n FROM customers WHERE name = $1', [name])
  return rows[0]!.n
}

t.test('a replay with the same key and body returns the first response without redoing the work', async (t) => {
  const first = await create('key-1', { name: 'Once', email: 'once@example.com' })
  t.equal(first.statusCode, 201)
  t.equal(first.headers['idempotent-replayed'], undefined)
  const again = await create('key-1', { email: 'once@example.com', name: 'Once' })
  t.equal(again.statusCode, 201)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.equal(again.body, first.body, 'the same body, byte for byte (key order in the request does not matter)')
  t.equal(await countNamed('Once'), 1)
})

t.test('the same key with another body is a 409', async (t) => {
  await create('key-2', { name: 'Original' })
  const res = await create('key-2', { name: 'Different' })
  t.equal(res.statusCode, 409)
  t.match(res.json(), { type: /idempotency-key-reuse$/ })
  t.equal(await countNamed('Different'), 0)
  const otherRoute = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/members',
    payload: { user_id: 'u', role: 'viewer' },
    headers: { 'idempotency-key': 'key-2' },
  }))
  t.equal(otherRoute.statusCode, 409, 'another route with the same key is another request')
})

t.test('two concurrent requests with one key do the work once', async (t) => {
  const results = await Promise.all(Array.from({ length: 5 }, () => create('key-3', { name: 'Concurrent' })))
  t.same(results.map((r) => r.statusCode), [201, 201, 201, 201, 201])
  t.equal(new Set(results.map((r) => r.json<{ id: string }>().id)).size, 1, 'all see the same customer')
  t.equal(results.filter((r) => r.headers['idempotent-replayed'] === 'true').length, 4)
  t.equal(await countNamed('Concurrent'), 1)
})

t.test('keys are per tenant', async (t) => {
  const other = await provisionTenant(ctx)
  await create('shared-key', { name: 'Mine' })
  const theirs = await create('shared-key', { name: 'Theirs' }, other)
  t.equal(theirs.statusCode, 201)
  t.equal(theirs.headers['idempotent-replayed'], undefined, "another tenant's key neither replays nor conflicts")
  t.equal(await countNamed('Theirs'), 1)
})

t.test('a failed request stores nothing, so it can be retried as it is', async (t) => {
  await create(undefined, { name: 'Taken', external_ref: 'dup-ref' })
  const failed = await create('key-4', { name: 'Retry', external_ref: 'dup-ref' })
  t.equal(failed.statusCode, 409)
  await query(ctx.db.adminUrl, "UPDATE customers SET external_ref = NULL WHERE external_ref = 'dup-ref'")
  const retried = await create('key-4', { name: 'Retry', external_ref: 'dup-ref' })
  t.equal(retried.statusCode, 201)
  t.equal(retried.headers['idempotent-replayed'], undefined)
})

t.test('keys expire after 24 hours', async (t) => {
  await create('key-5', { name: 'Old' })
  await query(ctx.db.adminUrl,
    "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'key-5'")
  const res = await create('key-5', { name: 'Old' })
  t.equal(res.headers['idempotent-replayed'], undefined, 'an expired key does the work again')
  t.equal(await countNamed('Old'), 2)
})

t.test('state transitions and 204s replay too', async (t) => {
  const c = (await create(undefined, { name: 'Payer' })).json<{ id: string }>()
  const inv = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: { customer_id: c.id, currency: 'EUR', lines: [{ description: 'x', quantity: 1, unit_amount_cents: 5 }] },
  }))
  const id = inv.json<{ id: string }>().id
  const fin = () => ctx.app.inject(as(tenant, {
    method: 'POST',
    url: `/v1/invoices/${id}/finalize`,
    headers: { 'idempotency-key': 'fin-1' },
  }))
  const a = await fin()
  const b = await fin()
  t.equal(a.statusCode, 200)
  t.equal(b.statusCode, 200, 'a retried finalize replays instead of failing with 409')
  t.equal(b.body, a.body)
  const withEmptyObject = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: `/v1/invoices/${id}/finalize`,
    headers: { 'idempotency-key': 'fin-1' },
    payload: {},
  }))
  t.equal(withEmptyObject.statusCode, 200, 'a retry that sends {} where the first sent no body replays too')
  t.equal(withEmptyObject.headers['idempotent-replayed'], 'true')
})

t.test('a key whose response held a secret is never replayed', async (t) => {
  const make = () => ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'ci', scopes: ['read'] },
    headers: { 'idempotency-key': 'key-secret' },
  }))
  t.equal((await make()).statusCode, 201)
  const again = await make()
  t.equal(again.statusCode, 409)
  t.match(again.json(), { type: /idempotency-already-processed$/ })
  const stored = await query<{ response: string | null }>(ctx.db.adminUrl,
    "SELECT response FROM idempotency_keys WHERE key = 'key-secret'")
  t.equal(stored[0]?.response, null, 'the key was not stored')
})

t.test('malformed keys are 400', async (t) => {
  for (const key of ['', 'a'.repeat(256), 'has space', 'naïve']) {
    t.equal((await create(key, { name: 'x' })).statusCode, 400, JSON.stringify(key))
  }
})

t.test('canonical JSON sorts keys at every level', async (t) => {
  t.equal(canonicalJson({ b: [{ d: 1, c: 2 }], a: null }), '{"a":null,"b":[{"c":2,"d":1}]}')
})
