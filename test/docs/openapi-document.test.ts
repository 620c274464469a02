// What makes the OpenAPI document generate a good client and a usable /docs page: named operations,
// shared schemas, optional defaults, meaningful responses, working examples, the right credentials.
// (test/routes/service.test.ts checks that it is valid OpenAPI 3.1 and lists every route.)
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import t from 'tap'
import { buildTestApp, provisionTenant } from '../helpers/app.ts'

interface Media { schema: Record<string, unknown>, example?: unknown }
interface Operation {
  operationId?: string
  security?: unknown[]
  parameters?: Array<{ in: string, name: string, required: boolean, schema: { default?: unknown } }>
  requestBody?: { content: Record<string, Media> }
  responses: Record<string, { description?: string, content?: Record<string, Media> }>
}
interface Document {
  paths: Record<string, Record<string, Operation>>
  components: { schemas: Record<string, unknown> }
}

const ctx = await buildTestApp(t)
const document = (await ctx.app.inject({ method: 'GET', url: '/openapi.json' })).json<Document>()
const operations = Object.entries(document.paths).flatMap(([path, ops]) =>
  Object.entries(ops).map(([method, op]) => ({ name: `${method.toUpperCase()} ${path}`, path, method, op })))
const schemas = document.components.schemas

/** Calls visit on every object of a tree, with where it is. */
function walk (node: unknown, visit: (object: Record<string, unknown>, at: string) => void, at = '#'): void {
  if (typeof node !== 'object' || node === null) return
  if (!Array.isArray(node)) visit(node as Record<string, unknown>, at)
  for (const [key, value] of Object.entries(node)) walk(value, visit, `${at}/${key}`)
}

t.test('every operation has a unique camelCase operationId, and the operator\'s start with admin', async (t) => {
  t.ok(operations.length >= 30, `${operations.length} operations`)
  for (const { name, path, op } of operations) {
    t.match(op.operationId, /^[a-z][A-Za-z0-9]*$/, `${name}: ${op.operationId}`)
    if (path.startsWith('/admin/')) t.match(op.operationId, /^admin[A-Z]/, `${name} is an operator operation`)
  }
  const ids = operations.map(({ op }) => op.operationId)
  t.equal(new Set(ids).size, ids.length, 'no two alike')
  const byName = Object.fromEntries(operations.map(({ name, op }) => [name, op.operationId]))
  t.match(byName, {
    'POST /v1/invoices': 'createInvoice',
    'GET /v1/invoices': 'listInvoices',
    'GET /v1/invoices/{id}': 'getInvoice',
    'PATCH /v1/invoices/{id}': 'updateInvoice',
    'POST /v1/invoices/{id}/finalize': 'finalizeInvoice',
    'POST /admin/v1/tenants': 'adminCreateTenant',
  })
})

t.test('resources, problems and pages are shared components, referenced and never copied inline', async (t) => {
  const expected = ['Problem', 'Tenant', 'OperatorTenant', 'OperatorTenantPage', 'Customer', 'CustomerPage',
    'Invoice', 'InvoiceLine', 'InvoicePage', 'ApiKey', 'CreatedApiKey', 'ApiKeyPage', 'Member', 'MemberPage',
    'AuditEvent', 'AuditEventPage', 'ErasureReceipt', 'CreatedTenant']
  for (const name of expected) t.ok(schemas[name], `components.schemas.${name}`)
  const dangling: string[] = []
  const inlined: string[] = []
  walk(document, (object, at) => {
    if (typeof object.$ref === 'string' && !(object.$ref.replace('#/components/schemas/', '') in schemas)) {
      dangling.push(`${at}: ${object.$ref}`)
    }
    // A shared schema carries its name as its title: one seen outside components is a copy.
    if (!at.startsWith('#/components/') && typeof object.title === 'string' && object.title in schemas) {
      inlined.push(`${at}: ${object.title}`)
    }
    if (Array.isArray(object.transform)) dangling.push(`${at}: Ajv's transform keyword`)
  })
  t.same(dangling, [], 'every $ref resolves, and no validator keyword leaks out')
  t.same(inlined, [], 'no shared schema is copied into an operation')
  const success = (name: string, status: string) =>
    operations.find((o) => o.name === name)?.op.responses[status]?.content?.['application/json']?.schema
  t.same(success('GET /v1/invoices/{id}', '200'), { $ref: '#/components/schemas/Invoice' })
  t.same(success('GET /v1/invoices', '200'), { $ref: '#/components/schemas/InvoicePage' })
  t.same(success('POST /v1/customers', '201'), { $ref: '#/components/schemas/Customer' })
  for (const { name, op } of operations) {
    for (const [status, response] of Object.entries(op.responses)) {
      if (!/^[45]/.test(status)) continue
      t.same(response.content?.['application/problem+json']?.schema, { $ref: '#/components/schemas/Problem' },
        `${name} ${status} is a Problem`)
    }
  }
})

t.test('every response says what it means', async (t) => {
  for (const { name, op } of operations) {
    for (const [status, response] of Object.entries(op.responses)) {
      t.ok(response.description !== undefined && !/^(Default Response|error)$/.test(response.description),
        `${name} ${status}: ${response.description}`)
    }
  }
})

t.test('a parameter with a default is optional, and the credentials are per route family', async (t) => {
  for (const { name, path, op } of operations) {
    for (const parameter of op.parameters ?? []) {
      if (parameter.schema.default !== undefined) t.equal(parameter.required, false, `${name} ${parameter.name}`)
    }
    const security = path.startsWith('/admin/')
      ? [{ operator: [] }]
      : path.startsWith('/v1/') ? [{ apiKey: [] }, { user: [] }] : []
    t.same(op.security, security, `${name} takes ${JSON.stringify(security)}`)
  }
  const limit = operations.find((o) => o.name === 'GET /v1/invoices')?.op.parameters?.find((p) => p.name === 'limit')
  t.match(limit, { in: 'query', required: false, schema: { default: 50 } }, 'limit defaults to 50')
})

t.test('every request body has an example that its schema accepts', async (t) => {
  const ajv = new Ajv({ strict: false, allErrors: true })
  ajvFormats.default(ajv)
  let bodies = 0
  for (const { name, op } of operations) {
    const media = op.requestBody?.content['application/json']
    if (media === undefined) continue
    bodies++
    t.not(media.example, undefined, `${name} has an example`)
    const validate = ajv.compile(media.schema)
    t.ok(validate(media.example), `${name}: its example is valid ${JSON.stringify(validate.errors)}`)
  }
  t.ok(bodies >= 8, `${bodies} request bodies`)
})

t.test('the documented invoice example is created as it is, given one of your customers', async (t) => {
  const tenant = await provisionTenant(ctx)
  const as = { authorization: `Bearer ${tenant.key}` }
  const example = (path: string): Record<string, unknown> =>
    document.paths[path]!.post!.requestBody!.content['application/json']!.example as Record<string, unknown>
  const post = (url: string, payload: Record<string, unknown>) =>
    ctx.app.inject({ method: 'POST', url, headers: as, payload })
  const customer = await post('/v1/customers', example('/v1/customers'))
  t.equal(customer.statusCode, 201, 'the customer example as it is')
  const unknown = await post('/v1/invoices', example('/v1/invoices'))
  t.equal(unknown.statusCode, 422, 'its customer_id is nobody\'s')
  const yours = customer.json<{ id: string }>().id
  const invoice = await post('/v1/invoices', { ...example('/v1/invoices'), customer_id: yours })
  t.equal(invoice.statusCode, 201, 'with one of yours, it is created')
})
