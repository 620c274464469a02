import { Validator } from '@seriousme/openapi-schema-validator'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

interface Operation {
  summary?: string
  tags?: string[]
  security?: unknown[]
  requestBody?: unknown
  parameters?: Array<{ in: string, name: string }>
  responses: Record<string, { content?: Record<string, unknown> }>
}

/**
 * `METHOD /path/{param}` for every route in Fastify's printRoutes({ commonPrefix: false }) tree,
 * where each line is a path segment under its parent (4 columns a level) with its methods.
 */
function registeredRoutes (tree: string): string[] {
  const stack: string[] = []
  const routes: string[] = []
  for (const line of tree.split('\n')) {
    const m = /^((?:[│ ] {3})*)[├└]── (\S+)(?: \(([^)]+)\))?$/.exec(line)
    if (m === null) continue
    const depth = m[1]!.length / 4
    stack.length = depth
    stack.push(m[2]!)
    const path = stack.join('')
    if (m[3] === undefined || path.includes('*')) continue
    for (const method of m[3].split(', ')) routes.push(`${method} ${path.replace(/:(\w+)/g, '{$1}')}`)
  }
  return routes
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

t.test('/readyz costs one statement, and the operator runs the safety checks on demand', async (t) => {
  const ctx = await buildTestApp(t)
  await ctx.app.ready()
  const before = ctx.app.dbTraffic.statements
  t.equal((await ctx.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
  t.equal(ctx.app.dbTraffic.statements - before, 1, 'readiness sends one statement, whatever the catalog holds')
  const operator = { authorization: `Bearer ${ctx.adminToken}` }
  const checks = async (): Promise<{ statusCode: number, body: { ok: boolean, problems: string[] } }> => {
    const res = await ctx.app.inject({ method: 'GET', url: '/admin/v1/maintenance/checks', headers: operator })
    return { statusCode: res.statusCode, body: res.json() }
  }
  t.same(await checks(), { statusCode: 200, body: { ok: true, problems: [] } })
  const anonymous = await ctx.app.inject({ method: 'GET', url: '/admin/v1/maintenance/checks' })
  t.equal(anonymous.statusCode, 401, 'operators only')
  await query(ctx.db.ownerUrl, 'ALTER TABLE customers NO FORCE ROW LEVEL SECURITY')
  const broken = await checks()
  t.equal(broken.body.ok, false)
  t.match(broken.body.problems.join('\n'), /customers/, 'the operator is told which table')
})

t.test('/readyz is refused at once when the connection queue is full, not queued behind it', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 1, DB_POOL_QUEUE_MAX: 0 })
  await ctx.app.ready()
  const held = await ctx.app.dbPool.connect()
  try {
    const ready = await ctx.app.inject({ method: 'GET', url: '/readyz' })
    t.equal(ready.statusCode, 503)
    t.equal(ready.headers['content-type'], 'application/problem+json; charset=utf-8')
    t.ok(ready.headers['retry-after'])
  } finally {
    held.release()
  }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200, 'ready once a connection is free')
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

  // Every route the app registers is in the document, and nothing else — except what is hidden on
  // purpose: HEAD (automatic), OPTIONS (CORS preflight), the documentation itself and /metrics.
  const documented = new Set(Object.entries(doc.paths)
    .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)))
  const registered = registeredRoutes(ctx.app.printRoutes({ commonPrefix: false }))
    .filter((r) => !/^(HEAD|OPTIONS) /.test(r) && !/^\S+ (\/docs|\/openapi\.json$|\/metrics$)/.test(r))
  t.ok(registered.length > 25, `${registered.length} registered routes`)
  t.ok(registered.includes('POST /admin/v1/maintenance/sweep'), 'read from the router, so a new route shows up')
  t.same([...documented].sort(), [...registered].sort(), 'exactly the routes the app registers')
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
        const bodiless = /\/(finalize|pay|void|accept|rotate-secret)$|\/maintenance\/sweep$|\/audit\/verify$/.test(path)
        t.ok(hasBody || bodiless, `${name} documents its request body`)
      }
      if (op.requestBody !== undefined) {
        for (const status of ['413', '415']) {
          const documented = op.responses[status]?.content?.['application/problem+json']
          t.ok(documented, `${name} documents ${status} as problem+json`)
        }
      }
      if (path.startsWith('/v1/')) {
        const headers = (op.parameters ?? []).filter((p) => p.in === 'header').map((p) => p.name).sort()
        const expected = method === 'post' ? ['idempotency-key', 'x-tenant-id'] : ['x-tenant-id']
        t.same(headers, expected, `${name} documents its headers`)
      }
    }
  }

  const docs = await ctx.app.inject({ method: 'GET', url: '/docs' })
  t.equal(docs.statusCode, 200)
  t.match(docs.headers['content-type'], /text\/html/)
  t.match(docs.body, /swagger-ui/)
  t.match(docs.body, /<title>rowfence API<\/title>/, 'under our own title')
})

t.test('unknown routes are problem+json 404s', async (t) => {
  const ctx = await buildTestApp(t)
  const res = await ctx.app.inject({ method: 'GET', url: '/nowhere?x=1' })
  t.equal(res.statusCode, 404)
  t.match(res.json(), { status: 404, title: 'Not Found', instance: '/nowhere' })
})
