import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'
import { addMember } from '../helpers/members.ts'

const ctx = await buildTestApp(t)

const user = (sub: string, tid: string) => ({ authorization: `Bearer ${signUserToken({ sub, tid, exp: inAnHour() })}` })

t.test('members are added, listed and removed', async (t) => {
  const tenant = await provisionTenant(ctx)
  const added = await addMember(ctx, tenant, { user_id: 'auth0|42', role: 'member' })
  t.equal(added.statusCode, 201)
  t.match(added.json(), { user_id: 'auth0|42', role: 'member' })
  const dup = await addMember(ctx, tenant, { user_id: 'auth0|42', role: 'viewer' })
  t.equal(dup.statusCode, 409)
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/members' }))
  t.same(list.json<{ data: Array<{ user_id: string }> }>().data.map((m) => m.user_id), ['auth0|42'])
  const removed = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/members/${encodeURIComponent('auth0|42')}` }))
  t.equal(removed.statusCode, 204)
  t.equal((await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/auth0%7C42' }))).statusCode, 404)
  for (const payload of [{ user_id: '', role: 'member' }, { user_id: 'x', role: 'god' }, { user_id: 'x' }]) {
    t.equal((await addMember(ctx, tenant, payload)).statusCode, 400, JSON.stringify(payload))
  }
})

t.test('the last owner cannot be removed', async (t) => {
  const tenant = await provisionTenant(ctx)
  await addMember(ctx, tenant, { user_id: 'olga', role: 'owner' })
  const res = await ctx.app.inject({ method: 'DELETE', url: '/v1/members/olga', headers: user('olga', tenant.id) })
  t.equal(res.statusCode, 409)
  t.match(res.json(), { detail: 'the last owner cannot be removed' })
})

t.test('two owners removed at once: exactly one removal succeeds', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const id of ['o1', 'o2']) await addMember(ctx, tenant, { user_id: id, role: 'owner' })
  const results = await Promise.all([
    ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/o1' })),
    ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/o2' })),
  ])
  t.same(results.map((r) => r.statusCode).sort(), [204, 409])
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/members' }))
  t.equal(list.json<{ data: unknown[] }>().data.length, 1, 'one owner is left')
})

t.test('only an owner can make or remove an owner', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const [id, role] of [['boss', 'owner'], ['adm', 'admin']]) {
    await addMember(ctx, tenant, { user_id: id, role })
  }
  const byAdmin = await ctx.app.inject({ method: 'POST', url: '/v1/members', headers: user('adm', tenant.id), payload: { user_id: 'new', role: 'owner' } })
  t.equal(byAdmin.statusCode, 403)
  const adminAddsMember = await ctx.app.inject({ method: 'POST', url: '/v1/members', headers: user('adm', tenant.id), payload: { user_id: 'new', role: 'member' } })
  t.equal(adminAddsMember.statusCode, 201)
  const byOwner = await ctx.app.inject({ method: 'POST', url: '/v1/members', headers: user('boss', tenant.id), payload: { user_id: 'heir', role: 'owner' } })
  t.equal(byOwner.statusCode, 201)
  const adminRemovesOwner = await ctx.app.inject({ method: 'DELETE', url: '/v1/members/heir', headers: user('adm', tenant.id) })
  t.equal(adminRemovesOwner.statusCode, 403)
})

t.test('members of another tenant are invisible and untouchable', async (t) => {
  const a = await provisionTenant(ctx)
  const b = await provisionTenant(ctx)
  await addMember(ctx, a, { user_id: 'only-in-a', role: 'member' })
  t.equal((await ctx.app.inject(as(b, { method: 'DELETE', url: '/v1/members/only-in-a' }))).statusCode, 404)
  const list = await ctx.app.inject(as(b, { method: 'GET', url: '/v1/members' }))
  t.same(list.json<{ data: unknown[] }>().data, [])
  const reuse = await addMember(ctx, b, { user_id: 'only-in-a', role: 'viewer' })
  t.equal(reuse.statusCode, 201, 'the same user may join another tenant: no cross-tenant uniqueness')
})

t.test('an admin user cannot escalate to owner in any way', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const [id, role] of [['boss', 'owner'], ['adm', 'admin']]) {
    t.equal((await addMember(ctx, tenant, { user_id: id, role })).statusCode, 201)
  }
  const adm = user('adm', tenant.id)
  const post = (headers: Record<string, string>, url: string, payload: Record<string, unknown>) => ctx.app.inject({ method: 'POST', url, headers, payload })
  const del = (headers: Record<string, string>, url: string) => ctx.app.inject({ method: 'DELETE', url, headers })

  // Directly, as the admin user.
  t.equal((await post(adm, '/v1/members', { user_id: 'accomplice', role: 'owner' })).statusCode, 403, 'cannot add an owner')
  t.equal((await post(adm, '/v1/members', { user_id: 'adm', role: 'owner' })).statusCode, 403, 'cannot make itself owner')
  t.equal((await del(adm, '/v1/members/boss')).statusCode, 403, 'cannot remove an owner')
  t.equal((await del(adm, `/v1/api-keys/${tenant.keyId}`)).statusCode, 403, "cannot revoke the operator's initial key")

  // Through keys it mints: they carry the admin scope but not owner rights, however many hops.
  const minted = await post(adm, '/v1/api-keys', { name: 'by adm', scopes: ['read', 'write', 'admin'] })
  t.equal(minted.statusCode, 201, 'an admin may mint an admin key')
  const key = { key: minted.json<{ key: string }>().key }
  const second = await ctx.app.inject(as(key, { method: 'POST', url: '/v1/api-keys', payload: { name: 'by key', scopes: ['read', 'write', 'admin'] } }))
  t.equal(second.statusCode, 201)
  for (const [name, k] of [['a key the admin minted', key], ['a key minted by that key', { key: second.json<{ key: string }>().key }]] as const) {
    t.equal((await addMember(ctx, k, { user_id: 'adm2', role: 'owner' })).statusCode, 403, `${name} cannot add an owner`)
    t.equal((await ctx.app.inject(as(k, { method: 'DELETE', url: '/v1/members/boss' }))).statusCode, 403, `${name} cannot remove an owner`)
    t.equal((await ctx.app.inject(as(k, { method: 'DELETE', url: `/v1/api-keys/${tenant.keyId}` }))).statusCode, 403, `${name} cannot revoke the initial key`)
  }
  // Leaving and coming back as an owner does not work either: the key cannot add an owner.
  t.equal((await ctx.app.inject(as(key, { method: 'DELETE', url: '/v1/members/adm' }))).statusCode, 204, 'an admin may remove an admin')
  t.equal((await addMember(ctx, key, { user_id: 'adm', role: 'owner' })).statusCode, 403)

  const owners = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/members' }))
  t.same(owners.json<{ data: Array<{ user_id: string, role: string }> }>().data.filter((m) => m.role === 'owner').map((m) => m.user_id), ['boss'], 'boss is still the only owner')
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200, 'the initial key still works')
})

t.test('owner rights pass from an owner to the admin keys it creates, and from the initial key', async (t) => {
  const tenant = await provisionTenant(ctx)
  t.equal((await addMember(ctx, tenant, { user_id: 'boss', role: 'owner' })).statusCode, 201, 'the initial key adds the first owner')
  const boss = user('boss', tenant.id)
  const ownerKey = await ctx.app.inject({ method: 'POST', url: '/v1/api-keys', headers: boss, payload: { name: 'by boss', scopes: ['read', 'write', 'admin'] } })
  const key = { key: ownerKey.json<{ key: string }>().key }
  t.equal((await addMember(ctx, key, { user_id: 'heir', role: 'owner' })).statusCode, 201, "an owner's admin key may add an owner")
  t.equal((await ctx.app.inject(as(key, { method: 'DELETE', url: '/v1/members/heir' }))).statusCode, 204, 'and remove one')
  const reader = await ctx.app.inject({ method: 'POST', url: '/v1/api-keys', headers: boss, payload: { name: 'reader', scopes: ['read'] } })
  t.equal(reader.statusCode, 201, 'an owner may mint a narrower key')
})

t.test('a credential cannot add a member with scopes it lacks', async (t) => {
  const tenant = await provisionTenant(ctx)
  const narrow = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/api-keys', payload: { name: 'read+admin', scopes: ['read', 'admin'] } }))
  const key = { key: narrow.json<{ key: string }>().key }
  const member = await addMember(ctx, key, { user_id: 'writer', role: 'member' })
  t.equal(member.statusCode, 403, 'a member role would add the write scope')
  t.match(member.json(), { detail: /write/ })
  t.equal((await addMember(ctx, key, { user_id: 'reader', role: 'viewer' })).statusCode, 201, 'a viewer is within its scopes')
})

t.test('adding someone changes nothing about their other tenants until they accept, with their own token', async (t) => {
  const home = await provisionTenant(ctx)
  const inviter = await provisionTenant(ctx)
  await addMember(ctx, home, { user_id: 'roamer', role: 'member' })
  const noTenant = { authorization: `Bearer ${signUserToken({ sub: 'roamer', exp: inAnHour() })}` }
  const tenantOf = async (): Promise<{ status: number, id?: string }> => {
    const res = await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: noTenant })
    return { status: res.statusCode, id: res.statusCode === 200 ? res.json<{ id: string }>().id : undefined }
  }
  t.same(await tenantOf(), { status: 200, id: home.id }, 'a token naming no tenant finds the only one')

  const invited = await ctx.app.inject(as(inviter, { method: 'POST', url: '/v1/members', payload: { user_id: 'roamer', role: 'admin' } }))
  t.equal(invited.statusCode, 201)
  t.match(invited.json(), { user_id: 'roamer', role: 'admin', status: 'pending', accepted_at: null })
  t.same(await tenantOf(), { status: 200, id: home.id }, "another tenant's invitation does not change how the token resolves")
  const early = await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: user('roamer', inviter.id) })
  t.equal(early.statusCode, 403, 'a pending member has no access')
  t.match(early.json(), { detail: /pending: accept it first/ })
  const keyAccepts = await ctx.app.inject(as(inviter, { method: 'POST', url: '/v1/membership/accept' }))
  t.equal(keyAccepts.statusCode, 403, 'an API key cannot accept for the user')
  const stranger = await ctx.app.inject({ method: 'POST', url: '/v1/membership/accept', headers: user('stranger', inviter.id) })
  t.equal(stranger.statusCode, 403, 'nobody accepts an invitation they do not have')

  const accepted = await ctx.app.inject({ method: 'POST', url: '/v1/membership/accept', headers: user('roamer', inviter.id) })
  t.equal(accepted.statusCode, 200)
  t.match(accepted.json(), { user_id: 'roamer', role: 'admin', status: 'active', accepted_at: /^\d{4}-/ })
  const again = await ctx.app.inject({ method: 'POST', url: '/v1/membership/accept', headers: user('roamer', inviter.id) })
  t.equal(again.statusCode, 200, 'accepting twice changes nothing')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: user('roamer', inviter.id) })).statusCode, 200)
  t.equal((await tenantOf()).status, 400, 'now the user belongs to two tenants and must choose')
  const trail = await ctx.app.inject(as(inviter, { method: 'GET', url: '/v1/audit-events' }))
  const actions = trail.json<{ data: Array<{ action: string, actor: { id: string } }> }>().data.map((e) => `${e.action} by ${e.actor.id}`)
  t.ok(actions.includes('member.accepted by roamer'), 'the acceptance is in the trail, by the user')
})

t.test('an invited owner who has not accepted cannot stand in for the last owner', async (t) => {
  const tenant = await provisionTenant(ctx)
  await addMember(ctx, tenant, { user_id: 'sole', role: 'owner' })
  const invited = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: 'maybe', role: 'owner' } }))
  t.equal(invited.statusCode, 201)
  const res = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/sole' }))
  t.equal(res.statusCode, 409, 'the only accepted owner stays')
  const withdrawn = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/maybe' }))
  t.equal(withdrawn.statusCode, 204, 'and can withdraw the invitation of another owner')
})
