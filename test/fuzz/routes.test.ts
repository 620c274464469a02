// Property-based attacks on every route the server documents: random valid and invalid requests
// (ids of the caller's own tenant, of another tenant and made up; bodies of the right shape with
// random values, or anything at all; odd headers and content types). Whatever is thrown: no 5xx,
// every error is problem+json, and no response of a tenant route holds another tenant's ids.
import { randomBytes } from 'node:crypto'
import fc from 'fast-check'
import t from 'tap'
import { formatApiKey } from '../../src/auth/api-keys.ts'
import { newId } from '../../src/ids.ts'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'

const ctx = await buildTestApp(t, { DB_POOL_MAX: 4 })

interface Seeded {
  tenant: ProvisionedTenant
  customers: string[]
  invoices: string[]
  keys: string[]
  members: string[]
}

async function seed (name: string): Promise<Seeded> {
  const tenant = await provisionTenant(ctx, name)
  const post = async (url: string, payload: unknown): Promise<{ id?: string, user_id?: string }> => {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url, payload: payload as Record<string, unknown> }))
    if (res.statusCode >= 300) throw new Error(`seeding ${url}: ${res.statusCode} ${res.body}`)
    return res.json()
  }
  const customers = [
    (await post('/v1/customers', { name: `${name} one`, external_ref: `${name}-ref` })).id!,
    (await post('/v1/customers', { name: `${name} two` })).id!,
  ]
  const line = { description: 'fuzz', quantity: 2, unit_amount_cents: 150 }
  const invoices = [
    (await post('/v1/invoices', { customer_id: customers[0], currency: 'EUR', lines: [line] })).id!,
    (await post('/v1/invoices', { customer_id: customers[1], currency: 'USD', lines: [line, line] })).id!,
  ]
  await post(`/v1/invoices/${invoices[1]!}/finalize`, {})
  const keys = [tenant.keyId, (await post('/v1/api-keys', { name: `${name} key`, scopes: ['read'] })).id!]
  const members = [(await post('/v1/members', { user_id: `${name}-user`, role: 'member' })).user_id!]
  return { tenant, customers, invoices, keys, members }
}

const mine = await seed('fuzz-mine')
const theirs = await seed('fuzz-theirs')
// The fuzzer's own credential is not among the ids it throws around (it would revoke itself).
const fuzzKey = (await ctx.app.inject(as(mine.tenant, {
  method: 'POST',
  url: '/v1/api-keys',
  payload: { name: 'fuzzer', scopes: ['read', 'write', 'admin'] },
}))).json<{ key: string }>().key
const theirIds = [theirs.tenant.id, ...theirs.customers, ...theirs.invoices, ...theirs.keys, ...theirs.members]

/** Every documented operation, from the OpenAPI document the server itself serves. */
const spec = (await ctx.app.inject({ method: 'GET', url: '/openapi.json' }))
  .json<{ paths: Record<string, Record<string, unknown>> }>()
const operations = Object.entries(spec.paths).flatMap(([path, ops]) =>
  Object.keys(ops).filter((m) => ['get', 'post', 'patch', 'put', 'delete'].includes(m))
    .map((m) => ({ method: m.toUpperCase() as 'GET', path })))
t.ok(operations.length >= 20, `${operations.length} operations to fuzz`)

// Path parameters: the caller's ids, the other tenant's, and made-up or malformed ones.
const ownId = fc.constantFrom(...mine.customers, ...mine.invoices, ...mine.keys, mine.tenant.id)
const foreignId = fc.constantFrom(...theirIds)
const oddText = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 20 }), // any code point, NUL and lone surrogates included
  fc.constantFrom('', ' ', '%00', '%zz', '..', '../admin', 'null', '-1', '0'.repeat(300), '🙂', 'x'.repeat(2000),
    "' OR 1=1 --"),
  fc.uuid()
)
const param = fc.oneof(ownId, foreignId, oddText, fc.constantFrom(...mine.members, ...theirs.members))

const jsonValue = fc.jsonValue({ maxDepth: 3 })
const line = fc.record({
  description: fc.oneof(fc.string({ maxLength: 600 }), jsonValue),
  quantity: fc.oneof(fc.integer({ min: -5, max: 2_000_000 }), fc.constant(1e30), jsonValue),
  unit_amount_cents: fc.oneof(fc.integer(), fc.maxSafeInteger(), fc.constant(100_000_000_000), jsonValue),
}, { requiredKeys: [] })
// Valid bodies (so that requests get past validation and into the handlers and the database),
// bodies of roughly the right shape with values from anywhere, or anything at all.
const validLine = fc.record({
  description: fc.string({ minLength: 1, maxLength: 50 }),
  quantity: fc.integer({ min: 1, max: 1_000_000 }),
  unit_amount_cents: fc.integer({ min: 0, max: 100_000_000_000 }),
})
const valid = fc.oneof(
  fc.record({
    name: fc.string({ minLength: 1, maxLength: 200 }),
    email: fc.emailAddress(),
    external_ref: fc.string({ minLength: 1, maxLength: 50 }),
  }, { requiredKeys: ['name'] }),
  fc.record({
    customer_id: fc.oneof(ownId, foreignId, fc.constantFrom(...mine.customers)),
    currency: fc.constantFrom('EUR', 'USD', 'JPY'),
    lines: fc.array(validLine, { minLength: 1, maxLength: 5 }),
    memo: fc.string({ maxLength: 100 }),
  }, { requiredKeys: ['customer_id', 'currency', 'lines'] }),
  fc.record({
    name: fc.string({ minLength: 1, maxLength: 50 }),
    scopes: fc.subarray(['read', 'write', 'admin'], { minLength: 1 }),
  }),
  fc.record({
    user_id: fc.stringMatching(/^[a-z0-9|@._-]{1,40}$/),
    role: fc.constantFrom('admin', 'member', 'viewer'),
  }),
  fc.constant({})
)
const body = fc.oneof(
  { arbitrary: valid, weight: 3 },
  jsonValue,
  fc.record({
    name: fc.oneof(fc.string({ maxLength: 250 }), fc.string({ unit: 'binary', maxLength: 30 }), jsonValue),
    slug: fc.oneof(fc.stringMatching(/^[a-z0-9][a-z0-9-]{1,20}$/), fc.string()),
    email: fc.oneof(fc.emailAddress(), fc.string(), fc.constant(null)),
    external_ref: fc.oneof(fc.string({ maxLength: 300 }), fc.constant(null)),
    customer_id: fc.oneof(ownId, foreignId, fc.string()),
    currency: fc.oneof(fc.constantFrom('EUR', 'USD', 'eur', 'EURO', ''), jsonValue),
    lines: fc.oneof(fc.array(line, { maxLength: 120 }), jsonValue),
    due_date: fc.oneof(fc.constantFrom('2026-12-31', '2026-02-30', 'tomorrow'), jsonValue),
    memo: fc.oneof(fc.string({ maxLength: 2100 }), jsonValue),
    scopes: fc.oneof(fc.subarray(['read', 'write', 'admin', 'root']), jsonValue),
    user_id: fc.oneof(fc.string({ maxLength: 300 }), jsonValue),
    role: fc.oneof(fc.constantFrom('owner', 'admin', 'member', 'viewer', 'god'), jsonValue),
    placement: fc.constantFrom('pooled', 'dedicated', 'elsewhere'),
  }, { requiredKeys: [] })
)
const query = fc.dictionary(
  fc.constantFrom('limit', 'cursor', 'status', 'customer_id', 'anchor_seq', 'anchor_hash', 'x'),
  fc.oneof(fc.string({ maxLength: 30 }), fc.integer().map(String), fc.constantFrom('0', '201', '-1', 'open', 'draft')),
  { maxKeys: 3 }
)
const contentType = fc.constantFrom('application/json', 'application/json', 'application/json', 'text/plain',
  'application/x-www-form-urlencoded', 'application/json; charset=latin1')
type Credential = 'mine' | 'none' | 'garbage' | 'forged' | 'forged-in-mine' | 'theirs-header'
const credential = fc.constantFrom<Credential>('mine', 'mine', 'mine', 'mine', 'mine', 'none', 'garbage', 'forged',
  'forged-in-mine', 'theirs-header')
// Well-formed keys (valid checksum) with made-up ids: they pass every check that needs no database.
const forgedKeys: Record<'forged' | 'forged-in-mine', string> = {
  forged: formatApiKey(newId(), newId(), randomBytes(32)).key,
  'forged-in-mine': formatApiKey(newId(), mine.tenant.id, randomBytes(32)).key,
}
// Bodies up to the body limit that once cost the server seconds and gigabytes: arrays far past their
// maxItems, deep nesting, many unknown properties. Made once; each run sends one of them.
const depth = 5000
const heavy = fc.constantFrom(
  `{"customer_id":"${mine.customers[0]!}","currency":"EUR","lines":[${Array(200_000).fill('{}').join(',')}]}`,
  JSON.stringify({ name: 'k', scopes: Array.from({ length: 40_000 }, (_, i) => i) }),
  `{"name":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`,
  `{"lines":[${'['.repeat(depth)}${']'.repeat(depth)}]}`,
  JSON.stringify(Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`p${i}`, [i]]))),
  JSON.stringify({ user_id: 'u'.repeat(900_000), role: 'member' })
)
/** A problem body stays small whatever was sent. */
const MAX_PROBLEM_BYTES = 4096

function problemOk (res: { statusCode: number, headers: Record<string, unknown>, body: string }): string | undefined {
  if (res.statusCode >= 500) return `5xx: ${res.statusCode} ${res.body}`
  if (res.statusCode < 400) return undefined
  if (!/^application\/problem\+json/.test(String(res.headers['content-type']))) {
    return `error without problem+json: ${res.statusCode} ${String(res.headers['content-type'])}`
  }
  let parsed: Record<string, unknown>
  try {
    parsed = JSON.parse(res.body) as Record<string, unknown>
  } catch {
    return `unparseable problem: ${res.body.slice(0, 200)}`
  }
  if (parsed.status !== res.statusCode || typeof parsed.title !== 'string' || typeof parsed.type !== 'string') {
    return `malformed problem: ${res.body.slice(0, 200)}`
  }
  if (res.body.length > MAX_PROBLEM_BYTES) return `a problem of ${res.body.length} bytes`
  if (/at .*\.ts:\d+|node_modules|SELECT |relation "|constraint|pg_/i.test(res.body)) {
    return `internals in a response: ${res.body.slice(0, 300)}`
  }
  return undefined
}

const tenantOperations = operations.filter((o) => o.path.startsWith('/v1/'))
const adminOperations = operations.filter((o) => o.path.startsWith('/admin/'))

t.test('tenant routes: random requests never give a 5xx, errors are problem+json, ' +
  'and no other tenant id leaks', async (t) => {
  const statuses = new Map<number, number>()
  const byCredential = new Map<Credential, Set<number>>()
  let runs = 0
  await fc.assert(fc.asyncProperty(
    fc.constantFrom(...tenantOperations), fc.array(param, { minLength: 2, maxLength: 2 }),
    fc.oneof({ arbitrary: body.map((b) => JSON.stringify(b) ?? 'null'), weight: 9 }, { arbitrary: heavy, weight: 1 }),
    query, contentType, credential, fc.boolean(),
    async (op, params, payload, qs, type, cred, withIdempotency) => {
      runs++
      let i = 0
      const url = op.path.replace(/\{[^}]+\}/g, () => encodeURIComponent(params[i++] ?? 'x')) +
        (Object.keys(qs).length > 0 ? `?${new URLSearchParams(qs).toString()}` : '')
      const headers: Record<string, string> = {}
      if (cred === 'mine' || cred === 'theirs-header') headers.authorization = `Bearer ${fuzzKey}`
      if (cred === 'garbage') headers.authorization = 'Bearer rfk_' + 'A'.repeat(93)
      if (cred === 'forged' || cred === 'forged-in-mine') headers.authorization = `Bearer ${forgedKeys[cred]}`
      if (cred === 'theirs-header') headers['x-tenant-id'] = theirs.tenant.id
      if (withIdempotency) headers['idempotency-key'] = `fuzz-${Math.random()}`
      const hasBody = op.method !== 'GET' && op.method !== 'DELETE'
      if (hasBody) headers['content-type'] = type
      const res = await ctx.app.inject({ method: op.method, url, headers, ...(hasBody && { payload }) })
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      byCredential.set(cred, (byCredential.get(cred) ?? new Set()).add(res.statusCode))
      const wrong = problemOk(res)
      if (wrong !== undefined) throw new Error(`${op.method} ${url}: ${wrong}`)
      const leaked = theirIds.find((id) => res.body.includes(id) && !url.includes(encodeURIComponent(id)))
      if (leaked !== undefined) {
        throw new Error(`${op.method} ${url}: another tenant's id ${leaked} in ${res.body.slice(0, 300)}`)
      }
      if ((cred === 'forged' || cred === 'forged-in-mine') && res.statusCode < 400) {
        throw new Error(`${op.method} ${url}: a forged key got ${res.statusCode}`)
      }
    }
  ), { numRuns: 3000, interruptAfterTimeLimit: 150_000, markInterruptAsFailure: true })
  t.equal(runs, 3000, 'every run was made (running out of time fails the test)')
  t.comment(`statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}`)
  // The fuzzing must get past validation often enough to exercise the handlers and the database.
  const handled = [...statuses].filter(([s]) => s < 300 || s === 404 || s === 409 || s === 422)
    .reduce((n, [, c]) => n + c, 0)
  t.ok(handled >= 300, `${handled} requests reached a handler (2xx, 404, 409, 422)`)
  for (const forged of ['forged', 'forged-in-mine'] as const) {
    t.ok(byCredential.get(forged)?.has(401), `${forged} keys were sent and refused with 401`)
  }
})

t.test('operator routes: random requests never give a 5xx and errors are problem+json', async (t) => {
  // Erasure and placement are aimed at made-up ids only: the seeded tenants must survive.
  const safeParam = fc.oneof(oddText, fc.uuid())
  const statuses = new Map<string, number>()
  let runs = 0
  await fc.assert(fc.asyncProperty(
    fc.constantFrom(...adminOperations), safeParam, body, query, contentType, fc.boolean(),
    async (op, param, payload, qs, type, operator) => {
      runs++
      const url = op.path.replace(/\{[^}]+\}/g, () => encodeURIComponent(param)) +
        (Object.keys(qs).length > 0 ? `?${new URLSearchParams(qs).toString()}` : '')
      const headers: Record<string, string> = { authorization: `Bearer ${operator ? ctx.adminToken : mine.tenant.key}` }
      const hasBody = op.method !== 'GET' && op.method !== 'DELETE'
      if (hasBody) headers['content-type'] = type
      const res = await ctx.app.inject({
        method: op.method,
        url,
        headers,
        ...(hasBody && { payload: JSON.stringify(payload) ?? 'null' }),
      })
      const who = operator ? 'operator' : 'tenant key'
      statuses.set(`${who} ${res.statusCode}`, (statuses.get(`${who} ${res.statusCode}`) ?? 0) + 1)
      const wrong = problemOk(res)
      if (wrong !== undefined) throw new Error(`${op.method} ${url}: ${wrong}`)
      // A tenant key is refused (401), unless the router refused the URL first (no such route, too long).
      const routed = res.statusCode !== 414 && !(res.statusCode === 404 && res.body.includes('"detail":"no route for '))
      if (!operator && routed && res.statusCode !== 401) {
        throw new Error(`${op.method} ${url}: a tenant key got ${res.statusCode} on an operator route`)
      }
    }
  ), { numRuns: 500, interruptAfterTimeLimit: 60_000, markInterruptAsFailure: true })
  t.equal(runs, 500, 'every run was made (running out of time fails the test)')
  const seen = Object.fromEntries([...statuses].sort())
  t.comment(`statuses: ${JSON.stringify(seen)}`)
  t.ok(Object.keys(seen).some((s) => /^operator 2\d\d$/.test(s)),
    'some operator requests succeeded (the fuzzing reached the handlers)')
  t.ok(seen['tenant key 401'] !== undefined, 'tenant keys were sent to operator routes, and refused')
  const still = await ctx.app.inject(as(theirs.tenant, { method: 'GET', url: '/v1/tenant' }))
  t.equal(still.statusCode, 200, 'the seeded tenants survived the fuzzing')
})
