import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'
import { addMember } from '../helpers/members.ts'
import { slowLink } from '../helpers/slow-link.ts'

const ctx = await buildTestApp(t)

const user = (sub: string, tid: string) => ({ authorization: `Bearer ${signUserToken({ sub, tid, exp: inAnHour() })}` })

type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE'
/** A request with a tenant's API key ({ key }) or a user's headers (user()). */
async function call (by: { key: string } | { authorization: string }, method: Method, url: string, payload?: object) {
  const headers = 'key' in by ? { authorization: `Bearer ${by.key}` } : by
  return ctx.app.inject({ method, url, headers, ...(payload !== undefined && { payload }) })
}
const status = async (...args: Parameters<typeof call>): Promise<number> => (await call(...args)).statusCode

t.test('members are added, listed and removed', async (t) => {
  const tenant = await provisionTenant(ctx)
  const added = await addMember(ctx, tenant, { user_id: 'auth0|42', role: 'member' })
  t.equal(added.statusCode, 201)
  t.match(added.json(), { user_id: 'auth0|42', role: 'member' })
  const dup = await addMember(ctx, tenant, { user_id: 'auth0|42', role: 'viewer' })
  t.equal(dup.statusCode, 409)
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/members' }))
  t.same(list.json<{ data: Array<{ user_id: string }> }>().data.map((m) => m.user_id), ['auth0|42'])
  const removed = await call(tenant, 'DELETE', `/v1/members/${encodeURIComponent('auth0|42')}`)
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
  const [adm, boss] = [user('adm', tenant.id), user('boss', tenant.id)]
  t.equal(await status(adm, 'POST', '/v1/members', { user_id: 'new', role: 'owner' }), 403)
  t.equal(await status(adm, 'POST', '/v1/members', { user_id: 'new', role: 'member' }), 201)
  t.equal(await status(boss, 'POST', '/v1/members', { user_id: 'heir', role: 'owner' }), 201)
  t.equal(await status(adm, 'DELETE', '/v1/members/heir'), 403)
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
  const everything = ['read', 'write', 'admin']

  // Directly, as the admin user.
  t.equal(await status(adm, 'POST', '/v1/members', { user_id: 'ally', role: 'owner' }), 403, 'cannot add an owner')
  t.equal(await status(adm, 'POST', '/v1/members', { user_id: 'adm', role: 'owner' }), 403, 'cannot make itself owner')
  t.equal(await status(adm, 'PATCH', '/v1/members/adm', { role: 'owner' }), 403, 'nor promote itself')
  t.equal(await status(adm, 'DELETE', '/v1/members/boss'), 403, 'cannot remove an owner')
  t.equal(await status(adm, 'DELETE', `/v1/api-keys/${tenant.keyId}`), 403, "cannot revoke the operator's initial key")

  // Through keys it mints: they carry the admin scope but not owner rights, however many hops.
  const minted = await call(adm, 'POST', '/v1/api-keys', { name: 'by adm', scopes: everything })
  t.equal(minted.statusCode, 201, 'an admin may mint an admin key')
  const asked = await call(adm, 'POST', '/v1/api-keys', { name: 'owner?', scopes: everything, owner_rights: true })
  t.equal(asked.statusCode, 403, 'but not one with owner rights')
  const key = { key: minted.json<{ key: string }>().key }
  const second = await call(key, 'POST', '/v1/api-keys', { name: 'by key', scopes: everything })
  t.equal(second.statusCode, 201)
  const secondKey = { key: second.json<{ key: string }>().key }
  for (const [name, k] of [['a key the admin minted', key], ['a key minted by that key', secondKey]] as const) {
    t.equal(await status(k, 'POST', '/v1/members', { user_id: 'a2', role: 'owner' }), 403, `${name}: adds no owner`)
    t.equal(await status(k, 'DELETE', '/v1/members/boss'), 403, `${name} cannot remove an owner`)
    t.equal(await status(k, 'DELETE', `/v1/api-keys/${tenant.keyId}`), 403, `${name} cannot revoke the initial key`)
  }
  // Leaving and coming back as an owner does not work either: the key cannot add an owner.
  t.equal(await status(key, 'DELETE', '/v1/members/adm'), 204, 'an admin may remove an admin')
  t.equal((await addMember(ctx, key, { user_id: 'adm', role: 'owner' })).statusCode, 403)

  const owners = (await call(tenant, 'GET', '/v1/members')).json<{ data: Array<{ user_id: string, role: string }> }>()
  t.same(owners.data.filter((m) => m.role === 'owner').map((m) => m.user_id), ['boss'], 'boss is still the only owner')
  t.equal(await status(tenant, 'GET', '/v1/tenant'), 200, 'the initial key still works')
})

t.test('an owner hands owner rights to an admin key it creates when it asks for them', async (t) => {
  const tenant = await provisionTenant(ctx)
  const first = await addMember(ctx, tenant, { user_id: 'boss', role: 'owner' })
  t.equal(first.statusCode, 201, 'the initial key adds the first owner')
  const boss = user('boss', tenant.id)
  const mint = async (payload: Record<string, unknown>) =>
    ctx.app.inject({ method: 'POST', url: '/v1/api-keys', headers: boss, payload })
  const ownerKey = await mint({ name: 'by boss', scopes: ['read', 'write', 'admin'], owner_rights: true })
  const key = { key: ownerKey.json<{ key: string }>().key }
  t.equal((await addMember(ctx, key, { user_id: 'heir', role: 'owner' })).statusCode, 201,
    "an owner's key with owner rights may add an owner")
  t.equal(await status(key, 'DELETE', '/v1/members/heir'), 204, 'and remove one')
  const plain = { key: (await mint({ name: 'plain', scopes: ['read', 'write', 'admin'] })).json<{ key: string }>().key }
  t.equal((await addMember(ctx, plain, { user_id: 'heir', role: 'owner' })).statusCode, 403,
    'an admin key the owner created without asking for owner rights has none')
  t.equal((await mint({ name: 'reader', scopes: ['read'] })).statusCode, 201, 'an owner may mint a narrower key')
})

t.test('a credential cannot add a member with scopes it lacks', async (t) => {
  const tenant = await provisionTenant(ctx)
  const narrow = await call(tenant, 'POST', '/v1/api-keys', { name: 'read+admin', scopes: ['read', 'admin'] })
  const key = { key: narrow.json<{ key: string }>().key }
  const member = await addMember(ctx, key, { user_id: 'writer', role: 'member' })
  t.equal(member.statusCode, 403, 'a member role would add the write scope')
  t.match(member.json(), { detail: /write/ })
  const viewer = await addMember(ctx, key, { user_id: 'reader', role: 'viewer' })
  t.equal(viewer.statusCode, 201, 'a viewer is within its scopes')
})

t.test('an invitation changes nothing for the user until they accept it with their own token', async (t) => {
  const home = await provisionTenant(ctx)
  const inviter = await provisionTenant(ctx)
  await addMember(ctx, home, { user_id: 'roamer', role: 'member' })
  const noTenant = { authorization: `Bearer ${signUserToken({ sub: 'roamer', exp: inAnHour() })}` }
  const tenantOf = async (): Promise<{ status: number, id?: string }> => {
    const res = await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: noTenant })
    return { status: res.statusCode, id: res.statusCode === 200 ? res.json<{ id: string }>().id : undefined }
  }
  t.same(await tenantOf(), { status: 200, id: home.id }, 'a token naming no tenant finds the only one')

  const invited = await call(inviter, 'POST', '/v1/members', { user_id: 'roamer', role: 'admin' })
  t.equal(invited.statusCode, 201)
  t.match(invited.json(), { user_id: 'roamer', role: 'admin', status: 'pending', accepted_at: null })
  t.same(await tenantOf(), { status: 200, id: home.id },
    "another tenant's invitation does not change how the token resolves")
  const early = await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: user('roamer', inviter.id) })
  t.equal(early.statusCode, 403, 'a pending member has no access')
  t.match(early.json(), { detail: /pending: accept it first/ })
  const keyAccepts = await ctx.app.inject(as(inviter, { method: 'POST', url: '/v1/membership/accept' }))
  t.equal(keyAccepts.statusCode, 403, 'an API key cannot accept for the user')
  const stranger = await call(user('stranger', inviter.id), 'POST', '/v1/membership/accept')
  t.equal(stranger.statusCode, 403, 'nobody accepts an invitation they do not have')

  const roamer = user('roamer', inviter.id)
  const accepted = await call(roamer, 'POST', '/v1/membership/accept')
  t.equal(accepted.statusCode, 200)
  t.match(accepted.json(), { user_id: 'roamer', role: 'admin', status: 'active', accepted_at: /^\d{4}-/ })
  t.equal(await status(roamer, 'POST', '/v1/membership/accept'), 200, 'accepting twice changes nothing')
  t.equal(await status(roamer, 'GET', '/v1/tenant'), 200)
  t.equal((await tenantOf()).status, 400, 'now the user belongs to two tenants and must choose')
  const trail = await ctx.app.inject(as(inviter, { method: 'GET', url: '/v1/audit-events' }))
  const actions = trail.json<{ data: Array<{ action: string, actor: { id: string } }> }>().data
    .map((e) => `${e.action} by ${e.actor.id}`)
  t.ok(actions.includes('member.accepted by roamer'), 'the acceptance is in the trail, by the user')
})

t.test('an invited owner who has not accepted cannot stand in for the last owner', async (t) => {
  const tenant = await provisionTenant(ctx)
  await addMember(ctx, tenant, { user_id: 'sole', role: 'owner' })
  const invited = await call(tenant, 'POST', '/v1/members', { user_id: 'maybe', role: 'owner' })
  t.equal(invited.statusCode, 201)
  const res = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/sole' }))
  t.equal(res.statusCode, 409, 'the only accepted owner stays')
  const withdrawn = await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/maybe' }))
  t.equal(withdrawn.statusCode, 204, 'and can withdraw the invitation of another owner')
})

t.test("a member's role is changed under the rules of adding and removing", async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const [id, role] of [['boss', 'owner'], ['adm', 'admin'], ['mem', 'member']]) {
    t.equal((await addMember(ctx, tenant, { user_id: id, role })).statusCode, 201)
  }
  const patch = async (by: { key: string } | { authorization: string }, userId: string, payload: object) =>
    call(by, 'PATCH', `/v1/members/${encodeURIComponent(userId)}`, payload)
  const key = { key: tenant.key }
  const [boss, adm] = [user('boss', tenant.id), user('adm', tenant.id)]

  const demoted = await patch(adm, 'mem', { role: 'viewer' })
  t.equal(demoted.statusCode, 200, 'an admin may demote a member')
  t.match(demoted.json(), { user_id: 'mem', role: 'viewer', status: 'active' })
  t.equal((await patch(adm, 'mem', { role: 'owner' })).statusCode, 403, 'an admin cannot promote to owner')
  t.equal((await patch(adm, 'adm', { role: 'owner' })).statusCode, 403, 'nor itself')
  t.equal((await patch(adm, 'boss', { role: 'admin' })).statusCode, 403, 'nor demote an owner')
  const narrow = await call(tenant, 'POST', '/v1/api-keys', { name: 'ra', scopes: ['read', 'admin'] })
  const narrowKey = { key: narrow.json<{ key: string }>().key }
  const beyond = await patch(narrowKey, 'mem', { role: 'member' })
  t.equal(beyond.statusCode, 403, 'no role with scopes beyond the credential\'s')
  t.match(beyond.json(), { detail: /write/ })

  t.equal((await patch(boss, 'adm', { role: 'owner' })).statusCode, 200, 'an owner promotes to owner')
  t.equal((await patch(key, 'boss', { role: 'admin' })).statusCode, 200, 'a key with owner rights demotes an owner')
  const last = await patch(user('adm', tenant.id), 'adm', { role: 'viewer' })
  t.equal(last.statusCode, 409, 'the last owner cannot be demoted')
  t.match(last.json(), { type: 'https://rowfence.dev/problems/last-owner' })

  const same = await patch(key, 'mem', { role: 'viewer' })
  t.equal(same.statusCode, 200, 'the same role again changes nothing')
  const trail = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events?limit=200' }))
  const changes = trail.json<{ data: Array<{ action: string, resource: { id: string }, data: unknown }> }>().data
    .filter((e) => e.action === 'member.role_changed').reverse().map((e) => [e.resource.id, e.data])
  t.same(changes, [
    ['mem', { old_role: 'member', new_role: 'viewer' }],
    ['adm', { old_role: 'admin', new_role: 'owner' }],
    ['boss', { old_role: 'owner', new_role: 'admin' }],
  ], 'each change is audited with the old and the new role, and nothing else is')

  for (const payload of [{}, { role: 'god' }, { role: 'viewer', user_id: 'x' }, { role: null }]) {
    t.equal((await patch(key, 'mem', payload)).statusCode, 400, JSON.stringify(payload))
  }
  t.equal((await patch(key, 'nobody', { role: 'viewer' })).statusCode, 404)
  const other = await provisionTenant(ctx)
  t.equal(await status(other, 'PATCH', '/v1/members/mem', { role: 'admin' }), 404, "another tenant's member: not found")
  const list = (await call(tenant, 'GET', '/v1/members')).json<{ data: Array<{ user_id: string, role: string }> }>()
  t.same(Object.fromEntries(list.data.map((m) => [m.user_id, m.role])), { boss: 'admin', adm: 'owner', mem: 'viewer' })
})

t.test('an invitation keeps its status when its role changes, and an invited owner is not an owner yet', async (t) => {
  const tenant = await provisionTenant(ctx)
  await addMember(ctx, tenant, { user_id: 'sole', role: 'owner' })
  t.equal(await status(tenant, 'POST', '/v1/members', { user_id: 'maybe', role: 'viewer' }), 201)
  const promoted = await call(tenant, 'PATCH', '/v1/members/maybe', { role: 'owner' })
  t.match(promoted.json(), { user_id: 'maybe', role: 'owner', status: 'pending', accepted_at: null })
  t.equal(await status(tenant, 'PATCH', '/v1/members/sole', { role: 'admin' }), 409, 'the only accepted owner stays')
})

t.test('two owners demoted at once: exactly one demotion succeeds', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const id of ['o1', 'o2']) await addMember(ctx, tenant, { user_id: id, role: 'owner' })
  const results = await Promise.all(['o1', 'o2'].map(async (id) => status(tenant, 'PATCH', `/v1/members/${id}`,
    { role: 'admin' })))
  t.same(results.sort(), [200, 409])
})

t.test('a new role applies from the next request, also on an instance that had the old one cached', async (t) => {
  // The changing instance hears notifications 150 ms late: its answer must wait for them.
  const changer = await buildTestApp(t, { DB_LISTEN_URL: await slowLink(t, ctx.db.appUrl, 150) }, ctx.db)
  const other = await buildTestApp(t, {}, ctx.db)
  const tenant = await provisionTenant(ctx)
  await addMember(ctx, tenant, { user_id: 'writer', role: 'admin' })
  const headers = user('writer', tenant.id)
  for (const app of [changer.app, other.app]) {
    await app.ready()
    for (let i = 0; i < 50 && app.credentialCache.getMember(tenant.id, 'writer') === undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20))
      t.equal((await app.inject({ method: 'GET', url: '/v1/tenant', headers })).statusCode, 200)
    }
    t.match(app.credentialCache.getMember(tenant.id, 'writer'), { role: 'admin' }, 'the admin role is cached')
  }
  const changed = await changer.app.inject(as(tenant, {
    method: 'PATCH', url: '/v1/members/writer', payload: { role: 'viewer' },
  }))
  t.equal(changed.statusCode, 200)
  t.equal(changer.app.credentialCache.getMember(tenant.id, 'writer'), undefined,
    'the changing instance answered only after its own cache let go of the old role')
  for (const app of [changer.app, other.app]) {
    const write = await app.inject({ method: 'POST', url: '/v1/customers', headers, payload: { name: 'by a viewer' } })
    t.equal(write.statusCode, 403, 'a viewer cannot write')
    t.equal((await app.inject({ method: 'GET', url: '/v1/customers', headers })).statusCode, 200, 'but reads')
  }
})
