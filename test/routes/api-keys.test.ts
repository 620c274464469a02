import pg from 'pg'
import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)
const other = await provisionTenant(ctx)

interface CreatedKey {
  id: string, name: string, scopes: string[], prefix: string, owner_rights: boolean, key: string, created_at: string
}

async function createKey (by: { key: string }, scopes: string[], name = 'key', ownerRights?: boolean) {
  const payload = { name, scopes, ...(ownerRights !== undefined && { owner_rights: ownerRights }) }
  const res = await ctx.app.inject(as(by, { method: 'POST', url: '/v1/api-keys', payload }))
  if (res.statusCode !== 201) throw new Error(`create key failed: ${res.statusCode} ${res.body}`)
  return res.json<CreatedKey>()
}

/** The status of a request made with a key. */
async function status (by: { key: string }, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: object) {
  return (await ctx.app.inject(as(by, { method, url, ...(payload !== undefined && { payload }) }))).statusCode
}

async function lastUsed (id: string): Promise<Date | null> {
  const rows = await query<{ last_used_at: Date | null }>(ctx.db.adminUrl,
    'SELECT last_used_at FROM api_keys WHERE id = $1', [id])
  return rows[0]!.last_used_at
}

t.test('a created key is shown once and works with exactly its scopes', async (t) => {
  const reader = await createKey(tenant, ['read'], 'reporting')
  t.match(reader, { name: 'reporting', scopes: ['read'] })
  t.ok(reader.key.startsWith(reader.prefix))
  t.equal((await ctx.app.inject(as(reader, { method: 'GET', url: '/v1/customers' }))).statusCode, 200)
  t.equal(await status(reader, 'POST', '/v1/customers', { name: 'x' }), 403)
  t.equal(await status(reader, 'GET', '/v1/api-keys'), 403, 'api-keys need the admin scope')

  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/api-keys' }))
  t.equal(list.statusCode, 200)
  const listed = list.json<{ data: Array<Record<string, unknown>> }>().data.find((k) => k.id === reader.id)
  t.ok(listed)
  t.notOk('key' in listed!, 'no secret in the list')
  t.notOk(list.body.includes(reader.key.slice(30)), 'no part of the secret anywhere')
  t.same(Object.keys(listed!).sort(), ['created_at', 'id', 'last_used_at', 'name', 'owner_rights', 'prefix', 'scopes'])
  t.equal(listed!.owner_rights, false)
})

t.test('a revoked key gets 401 on its very next request', async (t) => {
  const doomed = await createKey(tenant, ['read', 'write'])
  t.equal((await ctx.app.inject(as(doomed, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  const revoked = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${doomed.id}` }))
  t.equal(revoked.statusCode, 204)
  t.equal((await ctx.app.inject(as(doomed, { method: 'GET', url: '/v1/tenant' }))).statusCode, 401)
  // A second server instance on the same database has no cache to go stale either.
  const second = await buildTestApp(t, {}, ctx.db)
  t.equal((await second.app.inject(as(doomed, { method: 'GET', url: '/v1/tenant' }))).statusCode, 401)
  t.equal(await status(tenant, 'DELETE', `/v1/api-keys/${doomed.id}`), 404, 'revoking twice')
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/api-keys?limit=200' }))
  t.notOk(list.json<{ data: Array<{ id: string }> }>().data.some((k) => k.id === doomed.id),
    'revoked keys are not listed')
})

t.test("a tenant can neither see nor revoke another tenant's keys", async (t) => {
  const theirs = await createKey(other, ['read'])
  const revoke = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${theirs.id}` }))
  t.equal(revoke.statusCode, 404)
  t.equal((await ctx.app.inject(as(theirs, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200, 'still works')
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/api-keys?limit=200' }))
  t.notOk(list.body.includes(theirs.id))
})

t.test('the last admin key cannot be revoked until it has a successor', async (t) => {
  const solo = await provisionTenant(ctx)
  const last = await ctx.app.inject(as(solo, { method: 'DELETE', url: `/v1/api-keys/${solo.keyId}` }))
  t.equal(last.statusCode, 409)
  const plain = await createKey(solo, ['read', 'write', 'admin'])
  const refused = await ctx.app.inject(as(plain, { method: 'DELETE', url: `/v1/api-keys/${solo.keyId}` }))
  t.equal(refused.statusCode, 403, 'an admin key without owner rights cannot revoke the initial key, which has them')
  const successor = await createKey(solo, ['read', 'write', 'admin'], 'successor', true)
  const now = await ctx.app.inject(as(successor, { method: 'DELETE', url: `/v1/api-keys/${solo.keyId}` }))
  t.equal(now.statusCode, 204, 'rotation works with a successor that has owner rights')
  t.equal((await ctx.app.inject(as(solo, { method: 'GET', url: '/v1/tenant' }))).statusCode, 401)
})

t.test('an id in upper case is the same key: the last-admin guard holds, the trail keeps one spelling', async (t) => {
  const solo = await provisionTenant(ctx)
  const upper = solo.keyId.toUpperCase()
  const last = await ctx.app.inject(as(solo, { method: 'DELETE', url: `/v1/api-keys/${upper}` }))
  t.equal(last.statusCode, 409, 'the last admin key stays, however its id is spelled')
  t.equal((await ctx.app.inject(as(solo, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  const successor = await createKey(solo, ['read', 'write', 'admin'], 'successor', true)
  const revoked = await ctx.app.inject(as(successor, { method: 'DELETE', url: `/v1/api-keys/${upper}` }))
  t.equal(revoked.statusCode, 204)
  const events = await query<{ resource_id: string }>(ctx.db.adminUrl,
    "SELECT resource_id FROM audit_events WHERE tenant_id = $1 AND action = 'api_key.revoked'", [solo.id])
  t.same(events, [{ resource_id: solo.keyId }], 'the audit event names the canonical id')
  const customer = await ctx.app.inject(as(successor, { method: 'POST', url: '/v1/customers', payload: { name: 'C' } }))
  const id = customer.json<{ id: string }>().id
  const read = await ctx.app.inject(as(successor, { method: 'GET', url: `/v1/customers/${id.toUpperCase()}` }))
  t.equal(read.json<{ id: string }>().id, id, 'a resource read by its upper-case id answers with its canonical id')
})

t.test('key creation is validated', async (t) => {
  const payloads = [
    { name: 'x', scopes: [] }, { name: 'x', scopes: ['root'] }, { name: 'x', scopes: ['read', 'read'] },
    { name: '', scopes: ['read'] }, { scopes: ['read'] },
  ]
  for (const payload of payloads) {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/api-keys', payload }))
    t.equal(res.statusCode, 400, JSON.stringify(payload))
  }
})

t.test('last_used_at is recorded in batches, not written by each request', async (t) => {
  const key = await createKey(tenant, ['read'])
  await ctx.app.inject(as(key, { method: 'GET', url: '/v1/tenant' }))
  t.equal(await lastUsed(key.id), null, 'the request itself wrote nothing')
  await ctx.app.keyUsage.flush()
  t.type(await lastUsed(key.id), Date, 'the flush recorded the use')
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/api-keys?limit=200' }))
  const listed = list.json<{ data: Array<{ id: string, last_used_at: string | null }> }>().data
  t.ok(listed.find((k) => k.id === key.id)?.last_used_at)
})

t.test('a flush writes each tenant\'s uses under its own binding only, and never moves a time back', async (t) => {
  const keys: CreatedKey[] = []
  for (const owner of [tenant, tenant, tenant, other, other]) keys.push(await createKey(owner, ['read']))
  const [a1, a2, a3, b1, b2] = keys as [CreatedKey, CreatedKey, CreatedKey, CreatedKey, CreatedKey]
  const later = new Date('2100-01-01T00:00:00Z')
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET last_used_at = $2 WHERE id = $1', [a2.id, later])
  const usage = ctx.app.keyUsage
  usage.record(tenant.id, a1.id)
  usage.record(tenant.id, a2.id)
  usage.record(other.id, b1.id)
  // An attack: the first tenant's key named under the other tenant's binding.
  usage.record(other.id, a3.id)
  const [trips, statements] = [ctx.app.dbTraffic.roundTrips, ctx.app.dbTraffic.statements]
  await usage.flush()
  t.equal(ctx.app.dbTraffic.statements - statements, 10,
    'per tenant: BEGIN, the binding, synchronous_commit, one UPDATE, COMMIT')
  t.equal(ctx.app.dbTraffic.roundTrips - trips, 4, 'two round trips per tenant, however many keys')
  t.type(await lastUsed(a1.id), Date, 'a used key of the first tenant is recorded')
  t.same(await lastUsed(a2.id), later, 'a later recorded time is kept (greatest)')
  t.type(await lastUsed(b1.id), Date, "the other tenant's key is recorded in its own transaction")
  t.equal(await lastUsed(a3.id), null,
    "a key named under another tenant's binding is not written (the bound tenant's filter, and RLS behind it)")

  // One tenant's write failing does not lose the others' uses; the flush still reports the failure.
  // (No request ran since the last flush: the failing tenant is the first one written.)
  usage.record('not-a-tenant-id', a3.id)
  usage.record(other.id, b2.id)
  await t.rejects(usage.flush(), /tenant id must be a UUID/)
  t.type(await lastUsed(b2.id), Date, 'the other tenant was written despite the failure')
  t.equal(await lastUsed(a3.id), null)

  // A failure inside the transaction (after BEGIN and the binding: a value the UPDATE cannot cast)
  // rolls back and returns the connection to the pool, and the next tenant is still written.
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET last_used_at = NULL WHERE id = $1', [b2.id])
  const pool = ctx.app.dbPool
  usage.record(tenant.id, 'not-a-uuid')
  usage.record(other.id, b2.id)
  await t.rejects(usage.flush(), /invalid input syntax for type uuid/)
  t.type(await lastUsed(b2.id), Date, 'the next tenant was written after the rollback')
  t.equal(pool.idleCount, pool.totalCount, 'every connection is back in the pool, none left in a transaction')
  const app = new URL(ctx.db.appUrl)
  const session = [decodeURIComponent(app.pathname.slice(1)), decodeURIComponent(app.username)]
  const [open] = await query<{ n: number }>(ctx.db.adminUrl, 'SELECT count(*)::int AS n FROM pg_stat_activity ' +
    "WHERE datname = $1 AND usename = $2 AND state LIKE 'idle in transaction%'", session)
  t.equal(open?.n, 0, 'no session is left inside a transaction')
})

t.test('a tenant whose lock is held keeps its uses for the next flush and does not hold up the others', async (t) => {
  const [locked, free] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  // As an erasure or a placement move does: the tenant's lock, held exclusively in an open transaction.
  const holder = new pg.Client({ connectionString: ctx.db.adminUrl })
  await holder.connect()
  t.teardown(() => holder.end())
  await holder.query('BEGIN')
  await holder.query('SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7301))', [locked.id])
  const usage = ctx.app.keyUsage
  usage.record(locked.id, locked.keyId)
  usage.record(free.id, free.keyId)
  const flushed = usage.flush()
  await t.rejects(flushed, /took over \d+ ms|canceling statement/, 'the locked tenant fails within the time limit')
  t.type(await lastUsed(free.keyId), Date, 'the other tenant was written meanwhile')
  t.equal(await lastUsed(locked.keyId), null)
  t.equal(usage.pendingKeys, 1, 'the locked tenant\'s use is kept, not dropped')
  await holder.query('COMMIT')
  await usage.flush()
  t.type(await lastUsed(locked.keyId), Date, 'and written by the next flush')
  t.equal(usage.pendingKeys, 0)
})

t.test('a refused request is not a use of the key: only a key confirmed and allowed to act is recorded', async (t) => {
  const solo = await provisionTenant(ctx)
  const reader = await createKey(solo, ['read'])
  const revoked = await createKey(solo, ['read'])
  await ctx.app.keyUsage.flush()
  // Warm the cache with the key about to be revoked, so its next request goes ahead on the cached entry.
  t.equal((await ctx.app.inject(as(revoked, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  await ctx.app.keyUsage.flush()
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET last_used_at = NULL WHERE id = $1', [revoked.id])
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET revoked_at = now() WHERE id = $1', [revoked.id])

  const refusals = [
    [reader, { method: 'POST', url: '/v1/customers', payload: { name: 'no' } }, 403, 'missing scope'],
    [reader, { method: 'GET', url: '/v1/tenant', headers: { 'x-tenant-id': other.id } }, 403, 'another tenant named'],
    [revoked, { method: 'GET', url: '/v1/tenant' }, 401, 'revoked a moment ago'],
  ] as const
  for (const [key, request, status, why] of refusals) {
    t.equal((await ctx.app.inject(as(key, request))).statusCode, status, why)
  }
  await ctx.app.keyUsage.flush()
  t.equal(await lastUsed(reader.id), null, 'the refused reader was not recorded')
  t.equal(await lastUsed(revoked.id), null, 'the revoked key was not recorded')
  t.equal((await ctx.app.inject(as(reader, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  await ctx.app.keyUsage.flush()
  t.type(await lastUsed(reader.id), Date, 'a request it was allowed to make is')
})

t.test('a credential cannot create a key with scopes beyond its own', async (t) => {
  const narrow = await createKey(tenant, ['read', 'admin'], 'read+admin')
  const res = await ctx.app.inject(as(narrow, {
    method: 'POST', url: '/v1/api-keys', payload: { name: 'wider', scopes: ['read', 'write'] },
  }))
  t.equal(res.statusCode, 403)
  t.match(res.json(), { status: 403, detail: /scopes it lacks \(write\)/ })
  t.equal(await status(narrow, 'POST', '/v1/api-keys', { name: 'same', scopes: ['read'] }), 201,
    'a key within its scopes is fine')
  const [stored] = await query<{ n: number }>(ctx.db.adminUrl,
    "SELECT count(*)::int AS n FROM api_keys WHERE name = 'wider'")
  t.equal(stored?.n, 0, 'nothing was stored')
})

t.test('a key has owner rights only when its creation asks for them, from a credential that has them', async (t) => {
  const fresh = await provisionTenant(ctx)
  const owner = await createKey(fresh, ['read', 'write', 'admin'], 'owner key', true)
  t.equal(owner.owner_rights, true, 'asked for by the initial key, which has them')
  const plain = await createKey(fresh, ['read', 'write', 'admin'], 'plain admin')
  t.equal(plain.owner_rights, false, 'not asked for: none, even from a credential that has them')
  const byOwnerKey = await createKey(owner, ['read', 'admin'], 'second hop', true)
  t.equal(byOwnerKey.owner_rights, true, 'a key with owner rights may hand them on when asked')
  const reader = await createKey(fresh, ['read'], 'reader', false)

  const post = async (by: { key: string }, payload: Record<string, unknown>) =>
    ctx.app.inject(as(by, { method: 'POST', url: '/v1/api-keys', payload }))
  const escalation = await post(plain, { name: 'escalate', scopes: ['read', 'admin'], owner_rights: true })
  t.equal(escalation.statusCode, 403, 'a credential without owner rights cannot ask for them')
  t.match(escalation.json(), { detail: /only a credential with owner rights/ })
  const noAdmin = await post(fresh, { name: 'no admin', scopes: ['read', 'write'], owner_rights: true })
  t.equal(noAdmin.statusCode, 422, 'owner rights without the admin scope are a contradiction')
  t.match(noAdmin.json(), { errors: [{ path: 'body/owner_rights' }] })
  for (const ownerRights of ['true', 1, null]) {
    const typed = await post(fresh, { name: 'typed', scopes: ['admin'], owner_rights: ownerRights })
    t.equal(typed.statusCode, 400, JSON.stringify(ownerRights))
  }

  const rows = await query<{ id: string, owner_rights: boolean }>(ctx.db.adminUrl,
    'SELECT id, owner_rights FROM api_keys WHERE tenant_id = $1', [fresh.id])
  t.same(Object.fromEntries(rows.map((r) => [r.id, r.owner_rights])), {
    [fresh.keyId]: true, [owner.id]: true, [plain.id]: false, [byOwnerKey.id]: true, [reader.id]: false,
  }, 'stored as answered; nothing was stored for the refused requests')
  const list = await ctx.app.inject(as(fresh, { method: 'GET', url: '/v1/api-keys?limit=200' }))
  t.same(Object.fromEntries(list.json<{ data: Array<{ id: string, owner_rights: boolean }> }>().data
    .map((k) => [k.id, k.owner_rights])), Object.fromEntries(rows.map((r) => [r.id, r.owner_rights])), 'and listed so')
  const trail = await query<{ data: { owner_rights: boolean } }>(ctx.db.adminUrl,
    "SELECT data FROM audit_events WHERE tenant_id = $1 AND action = 'api_key.created' AND resource_id = $2",
    [fresh.id, owner.id])
  t.match(trail, [{ data: { owner_rights: true } }], 'the audit trail records it')

  // What the rights are for: the plain admin key cannot demote the owner the owner key can.
  t.equal(await status(owner, 'POST', '/v1/members', { user_id: 'boss', role: 'owner' }), 201)
  t.equal(await status(plain, 'DELETE', '/v1/members/boss'), 403)
  t.equal(await status(owner, 'DELETE', '/v1/members/boss'), 204)
})
