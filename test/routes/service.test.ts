import { Validator } from '@seriousme/openapi-schema-validator'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

interface Operation {
  summary?: string
  tags?: string[]
  security?: unknown[]
  requestBody?: unknown
  responses: Record<string, { content?: Record<string, unknown> }>
}

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

t.test('/openapi.json is a valid OpenAPI 3.1 document listing every route, and /docs is a page', async (t) => {
  const ctx = await buildTestApp(t)
  const res = await ctx.app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200)
  const doc = res.json<{ openapi: string, paths: Record<string, Record<string, Operation>> }>()
  t.equal(doc.openapi, '3.1.0')
  const validator = new Validator()
  const result = await validator.validate(doc)
  t.same(result.errors ?? [], [], 'the document validates against the OpenAPI 3.1 schema')
  t.equal(result.valid, true)

  // Every API route is in the document, and nothing else.
  const documented = new Set(Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)))
  const expected = [
    'GET /healthz', 'GET /readyz', 'GET /v1/tenant',
    'POST /v1/api-keys', 'GET /v1/api-keys', 'DELETE /v1/api-keys/{id}',
    'POST /v1/members', 'GET /v1/members', 'DELETE /v1/members/{user_id}',
    'POST /v1/customers', 'GET /v1/customers', 'GET /v1/customers/{id}', 'PATCH /v1/customers/{id}', 'DELETE /v1/customers/{id}',
    'POST /v1/invoices', 'GET /v1/invoices', 'GET /v1/invoices/{id}', 'PATCH /v1/invoices/{id}',
    'POST /v1/invoices/{id}/finalize', 'POST /v1/invoices/{id}/pay', 'POST /v1/invoices/{id}/void',
    'GET /v1/audit-events', 'GET /v1/audit-events/verify',
    'POST /admin/v1/tenants', 'GET /admin/v1/tenants', 'GET /admin/v1/tenants/{id}', 'PUT /admin/v1/tenants/{id}/placement',
    'GET /admin/v1/tenants/{id}/export', 'DELETE /admin/v1/tenants/{id}',
  ]
  t.same([...documented].sort(), [...expected].sort(), 'exactly the API routes')

  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const name = `${method.toUpperCase()} ${path}`
      t.ok(op.summary, `${name} has a summary`)
      t.ok(op.tags?.length, `${name} has tags`)
      const success = Object.keys(op.responses).filter((s) => s.startsWith('2'))
      t.equal(success.length, 1, `${name} documents its success response`)
      if (path.startsWith('/v1/') || path.startsWith('/admin/')) {
        t.ok(op.responses['401']?.content?.['application/problem+json'], `${name} documents 401 as problem+json`)
        t.ok(op.security?.length, `${name} declares its credentials`)
      }
      if (method === 'post' || method === 'patch' || method === 'put') {
        const hasBody = op.requestBody !== undefined
        const isTransition = /\/(finalize|pay|void)$/.test(path)
        t.ok(hasBody || isTransition, `${name} documents its request body`)
      }
    }
  }

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
