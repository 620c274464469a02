import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { operator } from '../helpers/operator.ts'

// GET /admin/v1/tenant-slugs/:slug: a tenant by the slug an operator knows it by.

const ctx = await buildTestApp(t)

t.test('a tenant can be found by its slug', async (t) => {
  const tenant = await provisionTenant(ctx, 'by-slug')
  const found = await ctx.app.inject({ url: '/admin/v1/tenant-slugs/by-slug', headers: operator(ctx) })
  t.equal(found.statusCode, 200)
  t.match(found.json(), { id: tenant.id, slug: 'by-slug', placement: 'pooled', status: 'active' })
  const missing = await ctx.app.inject({ url: '/admin/v1/tenant-slugs/nobody-here', headers: operator(ctx) })
  t.equal(missing.statusCode, 404)
  t.match(missing.json(), { detail: 'tenant not found' })
  const malformed = await ctx.app.inject({ url: '/admin/v1/tenant-slugs/Not_A_Slug', headers: operator(ctx) })
  t.equal(malformed.statusCode, 400)
  t.equal((await ctx.app.inject(as(tenant, { url: '/admin/v1/tenant-slugs/by-slug' }))).statusCode, 401)
})
