import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

t.test('/healthz and /readyz answer without credentials', async (t) => {
  const ctx = await buildTestApp(t)
  const health = await ctx.app.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 200)
  t.same(health.json(), { status: 'ok' })
  const ready = await ctx.app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200)
  t.match(ready.headers['x-request-id'], /.+/)
})

t.test('/readyz turns 503 when a safety check stops holding, without naming internals', async (t) => {
  const ctx = await buildTestApp(t)
  await query(ctx.db.ownerUrl, 'ALTER TABLE customers NO FORCE ROW LEVEL SECURITY')
  const ready = await ctx.app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.ok(ready.headers['retry-after'])
  t.notMatch(ready.body, /customers|FORCE/)
})

t.test('/openapi.json is an OpenAPI 3.1 document listing every route, and /docs is a page', async (t) => {
  const ctx = await buildTestApp(t)
  const res = await ctx.app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200)
  const doc = res.json<{ openapi: string, paths: Record<string, Record<string, { summary?: string, responses: Record<string, unknown> }>> }>()
  t.equal(doc.openapi, '3.1.0')
  const expected: Array<[string, string]> = [
    ['/healthz', 'get'], ['/readyz', 'get'], ['/v1/tenant', 'get'],
    ['/v1/customers', 'post'], ['/v1/customers', 'get'], ['/v1/customers/{id}', 'get'],
    ['/v1/customers/{id}', 'patch'], ['/v1/customers/{id}', 'delete'],
    ['/admin/v1/tenants', 'post'], ['/admin/v1/tenants', 'get'], ['/admin/v1/tenants/{id}', 'get'],
  ]
  for (const [path, method] of expected) {
    const op = doc.paths[path]?.[method]
    t.ok(op, `${method.toUpperCase()} ${path} is documented`)
    t.ok(op?.summary, `${method.toUpperCase()} ${path} has a summary`)
  }
  t.ok(doc.paths['/v1/customers']?.post?.responses['400'], 'errors are documented')
  const docs = await ctx.app.inject({ method: 'GET', url: '/docs' })
  t.equal(docs.statusCode, 200)
  t.match(docs.headers['content-type'], /text\/html/)
  t.match(docs.body, /swagger-ui/)
})

t.test('unknown routes are problem+json 404s', async (t) => {
  const ctx = await buildTestApp(t)
  const res = await ctx.app.inject({ method: 'GET', url: '/nowhere?x=1' })
  t.equal(res.statusCode, 404)
  t.match(res.json(), { status: 404, title: 'Not Found', instance: '/nowhere' })
})
