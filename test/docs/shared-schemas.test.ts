// Schemas registered with addSchema (src/schemas/shared.ts) are what response schemas refer to by $id:
// they must reach both our validators (strict bodies, coerced query strings) and the serializer.
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import t from 'tap'
import { CustomerSchema } from '../../src/schemas/customers.ts'
import { Ref } from '../../src/schemas/common.ts'
import { SHARED_SCHEMAS } from '../../src/schemas/shared.ts'
import { buildValidator, sizeLimits, validatorFactory } from '../../src/validation.ts'

const Thing = Type.Object({
  n: Type.Integer({ maximum: 5 }),
  s: Type.Optional(Type.String({ maxLength: 3 })),
}, { $id: 'Thing', additionalProperties: false })

t.test('a $ref to a shared schema validates bodies strictly and query strings with coercion', async (t) => {
  const compile = buildValidator({ Thing })
  const body = compile({ schema: { $ref: 'Thing' }, httpPart: 'body', method: 'POST', url: '/' })
  const query = compile({ schema: { $ref: 'Thing' }, httpPart: 'querystring', method: 'GET', url: '/' })
  t.equal(body({ n: 3 }), true)
  t.equal(body({ n: '3' }), false, 'a body is typed strictly')
  t.equal(query({ n: '3' }), true, 'a query string is text, parsed into its type')
  t.equal(query({ n: '9' }), false, 'and then checked')
  t.equal(body({ n: 1, s: 'x'.repeat(10_000) }), false)
  const errors = (body as unknown as { errors: Array<{ keyword: string }> }).errors
  t.match(errors, [{ keyword: 'maxLength' }], 'the size check reaches into the shared schema')
})

t.test('sizeLimits follows references to shared schemas, and a recursive one only once', async (t) => {
  const lookup = (ref: string): unknown => ({ Thing, Loop: { $id: 'Loop', items: { $ref: 'Loop' } } })[ref]
  t.same(sizeLimits({ $ref: 'Thing' }, lookup), {
    properties: { n: {}, s: { maxLength: 3 } }, maxProperties: 18,
  })
  t.same(sizeLimits({ $ref: 'Loop' }, lookup), { items: {} })
  t.same(sizeLimits({ $ref: 'Unknown' }, lookup), {}, 'an unknown reference has no limits to bring')
})

t.test('the app\'s schema set serializes a response through its $ref, dropping what the schema lacks', async (t) => {
  const app = Fastify({ schemaController: { compilersFactory: { buildValidator: validatorFactory } } })
  t.teardown(() => app.close())
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema)
  const customer = {
    id: '01900000-0000-7000-8000-000000000001',
    name: 'Ada',
    email: null,
    external_ref: null,
    created_at: '2030-01-01T00:00:00.000Z',
    updated_at: '2030-01-01T00:00:00.000Z',
  }
  app.post('/customers', {
    schema: { body: { $ref: 'Customer' }, response: { 200: Ref(CustomerSchema) } },
  }, async () => ({ ...customer, secret_column: 'never sent' }))
  const ok = await app.inject({ method: 'POST', url: '/customers', payload: customer })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), customer, 'only the shared schema\'s fields')
  const invalid = await app.inject({ method: 'POST', url: '/customers', payload: { ...customer, id: 7 } })
  t.equal(invalid.statusCode, 400, 'and the same reference validates a body')
})
