import { randomBytes } from 'node:crypto'
import t from 'tap'
import { formatApiKey } from '../../src/auth/api-keys.ts'
import { newId } from '../../src/ids.ts'
import { LISTED_PROBLEMS } from '../../src/plugins/app/errors.ts'
import { sizeLimits } from '../../src/validation.ts'
import { buildTestApp, provisionTenant } from '../helpers/app.ts'

// A key with a valid checksum whose key and tenant ids are made up: it passes the checks that need no
// database, so anyone can send one. What it can cost before the database refuses it must stay small.
const forgedKey = formatApiKey(newId(), newId(), randomBytes(32)).key
const forged = { authorization: `Bearer ${forgedKey}`, 'content-type': 'application/json' }

/** The real key of a tenant: what a tenant can cost the server is bounded too, for the other tenants' sake. */
async function tenantHeaders (ctx: Awaited<ReturnType<typeof buildTestApp>>): Promise<Record<string, string>> {
  const tenant = await provisionTenant(ctx)
  return { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json' }
}

t.test('a made-up key is refused before its body is read', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  // Not even JSON: had the body been read, this would be a 400.
  const keys = [forgedKey, formatApiKey(newId(), tenant.id, randomBytes(32)).key]
  for (const key of keys) {
    const res = await ctx.app.inject({
      method: 'POST',
      url: '/v1/invoices',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      payload: '{"lines": [{}, {}, not json',
    })
    t.equal(res.statusCode, 401, 'refused on the key, not on the body')
    t.equal(res.json<Problem>().detail, 'the API key is invalid or revoked')
  }
  const huge = `{"customer_id":"${newId()}","currency":"EUR","lines":[${Array(300_000).fill('{}').join(',')}]}`
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/invoices', headers: forged, payload: huge })
  t.equal(res.statusCode, 401)
  const real = await ctx.app.inject({
    method: 'POST',
    url: '/v1/invoices',
    headers: { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json' },
    payload: '{"lines": [{}, {}, not json',
  })
  t.equal(real.statusCode, 400, 'a real key\'s body is read (and found not to be JSON)')
})

/** A problem body is small whatever the request: this many bytes at most. */
const MAX_PROBLEM_BYTES = 4096

interface Problem { status: number, detail?: string, errors?: Array<{ path: string, message: string }> }

t.test('300,000 empty invoice lines get one small 400, not one error per line', async (t) => {
  const ctx = await buildTestApp(t)
  const { app } = ctx
  const headers = await tenantHeaders(ctx)
  const payload = `{"customer_id":"${newId()}","currency":"EUR","lines":[${Array(300_000).fill('{}').join(',')}]}`
  t.ok(payload.length < 1024 * 1024, 'the body is within the body limit')
  const res = await app.inject({ method: 'POST', url: '/v1/invoices', headers, payload })
  t.equal(res.statusCode, 400)
  t.ok(res.body.length <= MAX_PROBLEM_BYTES, `the answer is ${res.body.length} bytes`)
  const problem = res.json<Problem>()
  t.same(problem.errors, [{ path: 'body/lines', message: 'must NOT have more than 100 items' }])
})

t.test('50,000 numeric scopes are refused on the array size, before uniqueness is compared', async (t) => {
  const ctx = await buildTestApp(t)
  const { app } = ctx
  const headers = await tenantHeaders(ctx)
  const payload = JSON.stringify({ name: 'k', scopes: Array.from({ length: 50_000 }, (_, i) => i) })
  const res = await app.inject({ method: 'POST', url: '/v1/api-keys', headers, payload })
  t.equal(res.statusCode, 400)
  t.same(res.json<Problem>().errors, [{ path: 'body/scopes', message: 'must NOT have more than 3 items' }])
})

t.test('thousands of unknown properties, a deep object and a huge string each get one bounded answer', async (t) => {
  const ctx = await buildTestApp(t)
  const { app } = ctx
  const headers = await tenantHeaders(ctx)
  const unknown = Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`p${i}`, i]))
  const depth = 50_000
  const deep = `${'{"a":'.repeat(depth)}"x"${'}'.repeat(depth)}`
  const cases: Array<[string, string, string]> = [
    ['unknown properties', '/v1/customers', JSON.stringify({ name: 'n', ...unknown })],
    ['a deep object', '/v1/customers', `{"name":${deep}}`],
    ['a deep line', '/v1/invoices', `{"customer_id":"${newId()}","currency":"EUR","lines":[${deep}]}`],
    ['a huge string', '/v1/customers', JSON.stringify({ name: 'x'.repeat(900_000) })],
    ['a huge id', '/v1/invoices', JSON.stringify({ customer_id: 'a'.repeat(900_000), currency: 'EUR', lines: [] })],
  ]
  for (const [what, url, payload] of cases) {
    const res = await app.inject({ method: 'POST', url, headers, payload })
    t.equal(res.statusCode, 400, what)
    t.ok(res.body.length <= MAX_PROBLEM_BYTES, `${what}: the answer is ${res.body.length} bytes`)
    t.ok((res.json<Problem>().errors ?? []).length <= LISTED_PROBLEMS, `${what}: few problems listed`)
  }
})

t.test('many problems within the size limits are listed up to a bound, with their count', async (t) => {
  const ctx = await buildTestApp(t)
  const { app } = ctx
  const headers = await tenantHeaders(ctx)
  const lines = Array.from({ length: 100 }, () => ({ description: '', quantity: 0, unit_amount_cents: -1 }))
  const payload = JSON.stringify({ customer_id: 'nope', currency: 'eur', lines })
  const res = await app.inject({ method: 'POST', url: '/v1/invoices', headers, payload })
  t.equal(res.statusCode, 400)
  const problem = res.json<Problem>()
  t.equal(problem.errors?.length, LISTED_PROBLEMS)
  t.match(problem.detail, /^the request is invalid: \d+ problems, the first 10 listed$/)
  t.ok(Number(/(\d+) problems/.exec(problem.detail ?? '')?.[1]) > 300, 'the count covers every line')
  t.same(problem.errors?.slice(0, 2).map((e) => e.path), ['body/customer_id', 'body/currency'])
})

t.test('a few problems are all listed, with the plain detail', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const res = await ctx.app.inject({
    method: 'POST',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${tenant.key}` },
    payload: { name: 'n', colour: 'red', size: 3 },
  })
  t.equal(res.statusCode, 400)
  t.same(res.json<Problem>(), {
    type: 'https://rowfence.dev/problems/validation',
    title: 'Validation Failed',
    status: 400,
    detail: 'the request is invalid',
    instance: '/v1/customers',
    errors: [
      { path: 'body/colour', message: 'is not a known property' },
      { path: 'body/size', message: 'is not a known property' },
    ],
  })
})

interface JsonSchema {
  type?: string | string[]
  properties?: Record<string, JsonSchema>
  items?: JsonSchema
  additionalProperties?: boolean | JsonSchema
  anyOf?: JsonSchema[]
  oneOf?: JsonSchema[]
  allOf?: JsonSchema[]
  maxItems?: number
  maxLength?: number
  maxProperties?: number
  enum?: unknown[]
  const?: unknown
}

/** Where a request schema lets a client send an array, a string or an object of unbounded size. */
function unbounded (schema: JsonSchema, at: string): string[] {
  const found: string[] = []
  const types = [schema.type ?? []].flat()
  if (types.includes('array') && schema.maxItems === undefined) found.push(`${at}: an array without maxItems`)
  if (types.includes('string') && schema.maxLength === undefined && schema.enum === undefined &&
    schema.const === undefined) {
    found.push(`${at}: a string without maxLength`)
  }
  if (types.includes('object') && schema.additionalProperties !== false && schema.maxProperties === undefined) {
    found.push(`${at}: an object open to any number of properties`)
  }
  for (const [name, child] of Object.entries(schema.properties ?? {})) found.push(...unbounded(child, `${at}/${name}`))
  if (schema.items !== undefined) found.push(...unbounded(schema.items, `${at}[]`))
  if (typeof schema.additionalProperties === 'object') found.push(...unbounded(schema.additionalProperties, `${at}/*`))
  for (const branch of [...schema.anyOf ?? [], ...schema.oneOf ?? [], ...schema.allOf ?? []]) {
    found.push(...unbounded(branch, at))
  }
  return found
}

t.test('every request schema bounds its arrays, strings and objects', async (t) => {
  const { app } = await buildTestApp(t)
  await app.ready()
  type Operation = {
    parameters?: Array<{ name: string, in: string, schema: JsonSchema }>
    requestBody?: { content: Record<string, { schema: JsonSchema }> }
  }
  const doc = app.swagger() as { paths: Record<string, Record<string, Operation>> }
  const found: string[] = []
  let bodies = 0
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const where = `${method.toUpperCase()} ${path}`
      for (const parameter of operation.parameters ?? []) {
        found.push(...unbounded(parameter.schema, `${where} ${parameter.in} ${parameter.name}`))
      }
      for (const content of Object.values(operation.requestBody?.content ?? {})) {
        bodies++
        found.push(...unbounded(content.schema, `${where} body`))
      }
    }
  }
  t.ok(bodies >= 8, `request bodies were found (${bodies})`)
  t.same(found, [], 'no unbounded input')
})

t.test('sizeLimits keeps the size keywords only, through nesting, and caps closed objects', async (t) => {
  const schema = {
    type: 'object',
    additionalProperties: false,
    required: ['a'],
    properties: {
      a: { type: 'array', maxItems: 3, uniqueItems: true, items: { type: 'string', maxLength: 5, pattern: '^x' } },
      b: { oneOf: [{ type: 'string', maxLength: 2 }, { type: 'null' }] },
    },
  }
  t.same(sizeLimits(schema), {
    properties: {
      a: { maxItems: 3, items: { maxLength: 5 } },
      b: { anyOf: [{ maxLength: 2 }, {}] },
    },
    maxProperties: 18,
  })
})

t.test('a known key without the scope, or naming another tenant, is refused before its body is read', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const other = await provisionTenant(ctx)
  const created = await ctx.app.inject({
    method: 'POST',
    url: '/v1/api-keys',
    headers: { authorization: `Bearer ${tenant.key}` },
    payload: { name: 'reader', scopes: ['read'] },
  })
  const reader = created.json<{ key: string }>().key
  const notJson = '{"name": not json'
  const denied = await ctx.app.inject({
    method: 'POST',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${reader}`, 'content-type': 'application/json' },
    payload: notJson,
  })
  t.equal(denied.statusCode, 403, 'the missing scope, not the body')
  const before = ctx.app.dbTraffic.statements
  const elsewhere = await ctx.app.inject({
    method: 'POST',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json', 'x-tenant-id': other.id },
    payload: notJson,
  })
  t.equal(elsewhere.statusCode, 403, 'another tenant named in x-tenant-id')
  t.equal(ctx.app.dbTraffic.statements - before, 0, 'refused without the database')
})
