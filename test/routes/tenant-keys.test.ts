import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { operator } from '../helpers/operator.ts'

// DELETE /admin/v1/tenants/:id/api-keys/:key_id: the operator revokes one of a tenant's keys.

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx, 'keyed')
const other = await provisionTenant(ctx, 'neighbour')
const revoke = async (tenantId: string, keyId: string) => ctx.app.inject({
  method: 'DELETE', url: `/admin/v1/tenants/${tenantId}/api-keys/${keyId}`, headers: operator(ctx),
})
const issue = async (tenantId: string, scopes: string[]) => {
  const res = await ctx.app.inject({
    method: 'POST', url: `/admin/v1/tenants/${tenantId}/api-keys`, headers: operator(ctx), payload: { scopes },
  })
  return res.json<{ id: string, key: string }>()
}

t.test('a revoked key gets 401 from its next request on, and the audit trail names the operator', async (t) => {
  const reader = await issue(tenant.id, ['read'])
  t.equal((await ctx.app.inject(as(reader, { url: '/v1/tenant' }))).statusCode, 200, 'the key works first')
  const res = await revoke(tenant.id, reader.id)
  t.equal(res.statusCode, 204, res.body)
  t.equal((await ctx.app.inject(as(reader, { url: '/v1/tenant' }))).statusCode, 401, 'then it is refused')
  const events = (await ctx.app.inject(as(tenant, { url: '/v1/audit-events?limit=200' })))
    .json<{ data: Array<{ action: string, actor: { type: string }, resource: { id: string } }> }>().data
  t.match(events.find((e) => e.action === 'api_key.revoked' && e.resource.id === reader.id),
    { actor: { type: 'operator' } }, 'api_key.revoked, by the operator')
  const again = await revoke(tenant.id, reader.id)
  t.equal(again.statusCode, 404, 'a key revoked already is not live: 404')
  t.match(again.json(), { detail: 'API key not found' })
})

t.test('the tenant\'s last admin key stays until a replacement exists (409)', async (t) => {
  const res = await revoke(tenant.id, tenant.keyId)
  t.equal(res.statusCode, 409)
  t.match(res.headers['content-type'], /application\/problem\+json/)
  t.match(res.json(), { type: /last-admin-key$/, detail: /last API key with the admin scope/ })
  t.equal((await ctx.app.inject(as(tenant, { url: '/v1/tenant' }))).statusCode, 200, 'the key still works')
  const replacement = await issue(tenant.id, ['read', 'write', 'admin'])
  t.equal((await revoke(tenant.id, tenant.keyId)).statusCode, 204, 'with a replacement, it can go')
  t.equal((await ctx.app.inject(as(replacement, { url: '/v1/tenant' }))).statusCode, 200)
})

t.test('another tenant\'s key, an unknown tenant or key is a 404; a malformed id a 400', async (t) => {
  const viaWrongTenant = await revoke(tenant.id, other.keyId)
  t.equal(viaWrongTenant.statusCode, 404, 'a key of another tenant is not found under this one')
  t.equal((await ctx.app.inject(as(other, { url: '/v1/tenant' }))).statusCode, 200, 'and stays live')
  const unknownTenant = await revoke('0190a6d2-0000-7000-8000-000000000000', other.keyId)
  t.equal(unknownTenant.statusCode, 404)
  t.match(unknownTenant.json(), { detail: 'tenant not found' })
  t.equal((await revoke(tenant.id, '0190a6d2-0000-7000-8000-000000000000')).statusCode, 404)
  t.equal((await revoke(tenant.id, 'not-a-uuid')).statusCode, 400)
})

t.test('a tenant key on the operator route is refused', async (t) => {
  const url = `/admin/v1/tenants/${other.id}/api-keys/${other.keyId}`
  const res = await ctx.app.inject(as(other, { method: 'DELETE', url }))
  t.equal(res.statusCode, 401)
})
