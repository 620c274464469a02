import { randomUUID } from 'node:crypto'
import t from 'tap'
import { as, buildTestApp, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { holdTransaction, onboard, operator, someoneWaits, waitUntil } from '../helpers/operator.ts'

interface Created {
  tenant: { id: string, slug: string, placement: string }
  api_key: { id: string, key: string, scopes: string[] }
}
interface AuditEvent {
  actor: { type: string, id: string }
  action: string
  resource: { type: string, id: string }
  data: Record<string, unknown>
}
interface IssuedKey { id: string, key: string, name: string, scopes: string[], prefix: string }

// No load shedding: these tests start requests at once on a machine that may be busy.
const ctx = await buildTestApp(t, { MAX_EVENT_LOOP_DELAY_MS: 0 })

const create = async (c: TestApp, payload: Record<string, unknown>, idempotencyKey?: string) => c.app.inject({
  method: 'POST',
  url: '/admin/v1/tenants',
  headers: { ...operator(c), ...(idempotencyKey !== undefined && { 'idempotency-key': idempotencyKey }) },
  payload,
})

const issue = async (c: TestApp, tenantId: string, payload?: unknown, headers: Record<string, string> = operator(c)) =>
  c.app.inject({
    method: 'POST',
    url: `/admin/v1/tenants/${tenantId}/api-keys`,
    headers,
    ...(payload !== undefined && { payload: payload as Record<string, unknown> }),
  })

const tenantsWithSlug = async (c: TestApp, slug: string) =>
  (await query<{ id: string }>(c.db.adminUrl, 'SELECT id FROM tenants WHERE slug = $1', [slug])).map((r) => r.id)

const auditTrail = async (c: TestApp, key: string) => {
  const res = await c.app.inject(as({ key }, { method: 'GET', url: '/v1/audit-events?limit=100' }))
  return res.json<{ data: AuditEvent[] }>().data
}

const works = async (c: TestApp, key: string) =>
  (await c.app.inject(as({ key }, { method: 'GET', url: '/v1/tenant' }))).statusCode === 200

t.test('a creation whose response was lost, repeated with its key, gets its tenant and a new owner key', async (t) => {
  const body = { name: 'Lost Response', slug: 'lost-response' }
  const first = await create(ctx, body, 'create-lost-response')
  t.equal(first.statusCode, 201)
  const lost = first.json<Created>() // the client never sees this

  const retry = await create(ctx, body, 'create-lost-response')
  t.equal(retry.statusCode, 200, retry.body)
  t.equal(retry.headers['idempotent-replayed'], 'true')
  const again = retry.json<Created>()
  t.equal(again.tenant.id, lost.tenant.id, 'the same tenant')
  t.same(again.api_key.scopes, ['read', 'write', 'admin'])
  t.not(again.api_key.key, lost.api_key.key, 'a new key: the first one\'s secret was never stored')
  t.not(again.api_key.id, lost.api_key.id)
  t.same(await tenantsWithSlug(ctx, body.slug), [lost.tenant.id], 'one tenant')

  const key = again.api_key.key
  t.ok(await works(ctx, key), 'the new key works')
  const payload = { name: 'by the new key', scopes: ['admin'] }
  const minted = await ctx.app.inject(as({ key }, { method: 'POST', url: '/v1/api-keys', payload }))
  t.equal(minted.statusCode, 201, 'with the admin scope')
  const revoked = await ctx.app.inject(as({ key }, { method: 'DELETE', url: `/v1/api-keys/${lost.api_key.id}` }))
  t.equal(revoked.statusCode, 204, 'and owner rights: it revokes the first key, left live in case its response arrived')
  const trail = await auditTrail(ctx, key)
  const reissued = trail.find((e) => e.action === 'api_key.created' && e.resource.id === again.api_key.id)
  t.match(reissued, { actor: { type: 'operator' }, data: { owner_rights: true, reason: /repeated/ } }, 'audited')

  const [row] = await query<{ text: string }>(ctx.db.adminUrl, 'SELECT t::text AS text FROM tenants t WHERE id = $1',
    [lost.tenant.id])
  t.notOk(row!.text.includes('create-lost-response'), 'the idempotency key is stored only as a hash')
  t.equal((await create(ctx, body)).statusCode, 409, 'without the key, a repeat is still a conflict')
})

t.test('the same idempotency key with another body is a 409 and creates nothing; a day later it is free', async (t) => {
  const first = await create(ctx, { name: 'Keyed', slug: 'keyed-one' }, 'create-keyed')
  t.equal(first.statusCode, 201)
  const other = await create(ctx, { name: 'Keyed', slug: 'keyed-two' }, 'create-keyed')
  t.equal(other.statusCode, 409)
  t.match(other.json(), { type: /idempotency-key-reuse$/, detail: /different request/ })
  t.same(await tenantsWithSlug(ctx, 'keyed-two'), [], 'no second tenant')
  const same = await create(ctx, { name: 'Keyed', slug: 'keyed-one', placement: 'pooled' }, 'create-keyed')
  t.equal(same.statusCode, 200, 'an omitted placement is the pooled one: the same request')

  // A day later the key counts no more.
  await query(ctx.db.adminUrl, "UPDATE tenants SET created_at = created_at - interval '25 hours' WHERE slug = $1",
    ['keyed-one'])
  const fresh = await create(ctx, { name: 'Keyed', slug: 'keyed-two' }, 'create-keyed')
  t.equal(fresh.statusCode, 201, fresh.body)
  const repeated = await create(ctx, { name: 'Keyed', slug: 'keyed-two' }, 'create-keyed')
  t.equal(repeated.statusCode, 200, 'and now repeats the new creation')
})

t.test('an idempotency key that is not 1 to 255 visible ASCII characters is a 400', async (t) => {
  const res = await create(ctx, { name: 'Bad key', slug: 'bad-key' }, 'with space')
  t.equal(res.statusCode, 400)
  t.same(await tenantsWithSlug(ctx, 'bad-key'), [])
})

t.test('identical creations at once with one idempotency key make one tenant; each gets a working key', async (t) => {
  for (const placement of ['pooled', 'dedicated'] as const) {
    const body = { name: 'Racing', slug: `racing-${placement}`, placement }
    const results = await Promise.all(Array.from({ length: 4 }, async () => create(ctx, body, `race-${placement}`)))
    t.same(results.map((r) => r.statusCode).sort(), [200, 200, 200, 201], results.map((r) => r.body).join('\n'))
    const ids = new Set(results.map((r) => r.json<Created>().tenant.id))
    t.equal(ids.size, 1, `${placement}: one tenant in every response`)
    t.same(await tenantsWithSlug(ctx, body.slug), [...ids], `${placement}: one tenant in the registry`)
    for (const r of results) t.ok(await works(ctx, r.json<Created>().api_key.key), `${placement}: the key works`)
  }
})

t.test('two creations with one key held at the unique index: the second waits, then repeats the first', async (t) => {
  // An uncommitted row with the slug: both requests pass the early checks and then wait on the
  // unique index; when it goes away, one commits first and the other fails on the unique key.
  const body = { name: 'Held', slug: 'held-at-the-key' }
  const blocker = 'INSERT INTO tenants (id, name, slug, shard) VALUES ($1, $2, $3, 0)'
  const held = await holdTransaction(ctx.db.adminUrl, [[blocker, [randomUUID(), 'blocker', body.slug]]])
  t.teardown(held.release)
  const racing = [create(ctx, body, 'create-held'), create(ctx, body, 'create-held')]
  const waiting = "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' " +
    "AND query LIKE 'insert into \"tenants\"%'"
  await waitUntil('both creations wait on the unique key', async () =>
    (await query<{ n: number }>(ctx.db.adminUrl, waiting))[0]!.n === 2)
  t.ok(await someoneWaits(ctx, /insert into "tenants"/))
  await held.release()
  const results = await Promise.all(racing)
  t.same(results.map((r) => r.statusCode).sort(), [200, 201], results.map((r) => r.body).join('\n'))
  t.equal(results[0]!.json<Created>().tenant.id, results[1]!.json<Created>().tenant.id)
  t.equal((await tenantsWithSlug(ctx, body.slug)).length, 1)
})

t.test('the operator issues an owner key for a tenant: it works, and its audit trail names the operator', async (t) => {
  const tenant = await onboard(ctx, 'lost-its-keys')
  // The tenant is left without a working key (say, its only admin key revoked by mistake).
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1', [tenant.id])
  t.notOk(await works(ctx, tenant.key))

  const res = await issue(ctx, tenant.id, {})
  t.equal(res.statusCode, 201, res.body)
  const issued = res.json<IssuedKey>()
  t.match(issued, { name: 'operator-issued key', scopes: ['read', 'write', 'admin'] })
  t.ok(issued.key.startsWith(issued.prefix))
  const key = issued.key
  t.ok(await works(ctx, key), 'the key works')
  const [stored] = await query<{ owner_rights: boolean, secret_hash: Buffer }>(ctx.db.adminUrl,
    'SELECT owner_rights, secret_hash FROM api_keys WHERE id = $1', [issued.id])
  t.equal(stored!.owner_rights, true, 'an owner key')
  t.notOk(stored!.secret_hash.toString('latin1').includes(key), 'stored as a hash')
  const event = (await auditTrail(ctx, key)).find((e) => e.action === 'api_key.created' && e.resource.id === issued.id)
  t.match(event, {
    actor: { type: 'operator', id: 'operator' },
    resource: { type: 'api_key' },
    data: { prefix: issued.prefix, owner_rights: true },
  }, 'in the tenant\'s audit trail, created by the operator')
  const verified = await ctx.app.inject(as({ key }, { method: 'GET', url: '/v1/audit-events/verify' }))
  t.match(verified.json(), { ok: true }, 'the chain verifies')

  t.equal((await issue(ctx, tenant.id)).statusCode, 201, 'no body: the defaults')
  const nullBody = await issue(ctx, tenant.id, undefined, { ...operator(ctx), 'content-type': 'application/json' })
  t.equal(nullBody.statusCode, 201, 'an empty JSON body is no body: the defaults (clients send the header always)')
  const narrow = await issue(ctx, tenant.id, { name: 'reader', scopes: ['read'] })
  t.equal(narrow.statusCode, 201)
  t.match(narrow.json(), { name: 'reader', scopes: ['read'] })
  const reader = narrow.json<IssuedKey>().key
  const customer = { method: 'POST' as const, url: '/v1/customers', payload: { name: 'w' } }
  const write = await ctx.app.inject(as({ key: reader }, customer))
  t.equal(write.statusCode, 403, 'a read key is a read key')
  t.equal((await issue(ctx, tenant.id, {}, { authorization: `Bearer ${key}` })).statusCode, 401, 'a tenant key cannot')
})

t.test('issuing a key: 404 for an unknown or erased tenant, 409 for a tenant being erased', async (t) => {
  const unknown = await issue(ctx, '0190a6d2-0000-7000-8000-000000000000', {})
  t.equal(unknown.statusCode, 404)
  t.match(unknown.json(), { detail: 'tenant not found' })

  const erased = await onboard(ctx, 'erased-before')
  const url = `/admin/v1/tenants/${erased.id}`
  const erasure = await ctx.app.inject({ method: 'DELETE', url, headers: operator(ctx) })
  t.equal(erasure.statusCode, 200)
  t.match((await issue(ctx, erased.id, {})).json(), { status: 404, detail: 'tenant not found' })

  const erasing = await onboard(ctx, 'being-erased')
  await query(ctx.db.adminUrl, "UPDATE tenants SET status = 'erasing' WHERE id = $1", [erasing.id])
  const refused = await issue(ctx, erasing.id, {})
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { type: /tenant-erasing$/ })
  const made = await query(ctx.db.adminUrl, 'SELECT 1 FROM api_keys WHERE tenant_id = $1 AND name = $2',
    [erasing.id, 'operator-issued key'])
  t.same(made, [], 'no key was made')
})
