import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

const ctx = await buildTestApp(t)

const user = (sub: string, tid: string) => ({ authorization: `Bearer ${signUserToken({ sub, tid, exp: inAnHour() })}` })

t.test('members are added, listed and removed', async (t) => {
  const tenant = await provisionTenant(ctx)
  const added = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: 'auth0|42', role: 'member' } }))
  t.equal(added.statusCode, 201)
  t.match(added.json(), { user_id: 'auth0|42', role: 'member' })
  const dup = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: 'auth0|42', role: 'viewer' } }))
  t.equal(dup.statusCode, 409)
  const list = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/members' }))
  t.same(list.json<{ data: Array<{ user_id: string }> }>().data.map((m) => m.user_id), ['auth0|42'])
  const removed = await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/members/${encodeURIComponent('auth0|42')}` }))
  t.equal(removed.statusCode, 204)
  t.equal((await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/auth0%7C42' }))).statusCode, 404)
  for (const payload of [{ user_id: '', role: 'member' }, { user_id: 'x', role: 'god' }, { user_id: 'x' }]) {
    t.equal((await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload }))).statusCode, 400, JSON.stringify(payload))
  }
})

t.test('the last owner cannot be removed', async (t) => {
  const tenant = await provisionTenant(ctx)
  await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: 'olga', role: 'owner' } }))
  const res = await ctx.app.inject({ method: 'DELETE', url: '/v1/members/olga', headers: user('olga', tenant.id) })
  t.equal(res.statusCode, 409)
  t.match(res.json(), { detail: 'the last owner cannot be removed' })
})

t.test('two owners removed at once: exactly one removal succeeds', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const id of ['o1', 'o2']) await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: id, role: 'owner' } }))
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
    await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/members', payload: { user_id: id, role } }))
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
  await ctx.app.inject(as(a, { method: 'POST', url: '/v1/members', payload: { user_id: 'only-in-a', role: 'member' } }))
  t.equal((await ctx.app.inject(as(b, { method: 'DELETE', url: '/v1/members/only-in-a' }))).statusCode, 404)
  const list = await ctx.app.inject(as(b, { method: 'GET', url: '/v1/members' }))
  t.same(list.json<{ data: unknown[] }>().data, [])
  const reuse = await ctx.app.inject(as(b, { method: 'POST', url: '/v1/members', payload: { user_id: 'only-in-a', role: 'viewer' } }))
  t.equal(reuse.statusCode, 201, 'the same user may join another tenant: no cross-tenant uniqueness')
})
