// The TypeScript client (clients/typescript): its generated types are those of the document the server
// serves, and it drives a live server over HTTP, as an application using it would.
import { randomBytes, randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import t from 'tap'
import {
  createRowfenceClient, idempotencyKey, RowfenceError, type ItemOf, type PagedPath, type Problem,
} from '../../clients/typescript/src/index.ts'
import { CLIENT_SCHEMA_FILE, clientSchemaSource } from '../../scripts/generate-client.ts'
import { buildTestApp, provisionTenant } from '../helpers/app.ts'

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)
const baseUrl = await ctx.app.listen({ host: '127.0.0.1', port: 0 })

/** Every request the client sends, to see what went over the wire. */
const sent: Request[] = []
const client = createRowfenceClient({
  baseUrl, apiKey: tenant.key, fetch: async (request) => { sent.push(request.clone()); return fetch(request) },
})

t.test('the committed clients/typescript/src/schema.ts is generated from the document the server serves', async (t) => {
  const document = (await ctx.app.inject({ method: 'GET', url: '/openapi.json' })).json<unknown>()
  const fresh = await clientSchemaSource(document)
  const committed = await readFile(CLIENT_SCHEMA_FILE, 'utf8')
  const fresher = fresh.split('\n')
  const line = committed.split('\n').findIndex((text, i) => text !== fresher[i]) + 1
  t.ok(committed === fresh, committed === fresh
    ? 'clients/typescript/src/schema.ts is current'
    : `clients/typescript/src/schema.ts is stale from line ${line || fresher.length}: run npm run client:generate`)
  t.match(committed, /Do not edit/, 'it says it is generated')
})

t.test('a customer and an invoice are created and read back through the client', async (t) => {
  const customer = await client.POST('/v1/customers', { body: { name: 'Ada Lovelace', email: 'ada@example.com' } })
  t.equal(customer.response.status, 201)
  t.ok(customer.data, 'typed data on success')
  const customerId = customer.data!.id
  t.equal(sent.at(-1)?.headers.get('authorization'), `Bearer ${tenant.key}`, 'the key goes as a bearer token')

  const lines = [{ description: 'Consulting', quantity: 3, unit_amount_cents: 12_500 }]
  const created = await client.POST('/v1/invoices', { body: { customer_id: customerId, currency: 'EUR', lines } })
  t.equal(created.response.status, 201)
  t.equal(created.data?.amount_cents, 37_500, 'priced by the server')
  t.equal(created.data?.status, 'draft')

  const read = await client.GET('/v1/invoices/{id}', { params: { path: { id: created.data!.id } } })
  t.equal(read.response.status, 200)
  t.same(read.data, created.data, 'the same invoice')
})

t.test('paginate walks every page of a list, following next_cursor', async (t) => {
  const added = await client.POST('/v1/customers', { body: { name: 'Paged' } })
  const ids: string[] = []
  for (let i = 0; i < 5; i++) {
    const lines = [{ description: `item ${i}`, quantity: 1, unit_amount_cents: i }]
    const invoice = await client.POST('/v1/invoices', { body: { customer_id: added.data!.id, currency: 'USD', lines } })
    ids.unshift(invoice.data!.id)
  }
  const before = sent.length
  const seen: Array<ItemOf<'/v1/invoices'>> = []
  for await (const invoice of client.paginate('/v1/invoices', { limit: 2, customer_id: added.data!.id })) {
    seen.push(invoice)
  }
  t.same(seen.map((invoice) => invoice.id), ids, 'every invoice once, newest first')
  const pages = sent.slice(before).map((request) => new URL(request.url))
  t.equal(pages.length, 3, 'three pages of at most two')
  t.notOk(pages[0]!.searchParams.has('cursor'), 'the first page without a cursor')
  t.ok(pages.slice(1).every((url) => url.searchParams.get('cursor') !== null), 'the next ones with the cursor given')
  const paged: PagedPath[] = ['/v1/customers', '/v1/invoices', '/v1/api-keys', '/v1/members', '/admin/v1/tenants']
  t.equal(paged.length, 5, 'the list paths are paged paths to the type checker')
})

t.test('an error response surfaces as a typed problem', async (t) => {
  const missing = await client.GET('/v1/invoices/{id}', { params: { path: { id: randomUUID() } } })
  t.equal(missing.response.status, 404)
  const problem: Problem | undefined = missing.error
  t.match(problem, { status: 404, title: 'Not Found' })
  t.equal(missing.response.headers.get('content-type'), 'application/problem+json; charset=utf-8')

  const lines = [{ description: 'x', quantity: 1, unit_amount_cents: 1 }]
  const body = { customer_id: randomUUID(), currency: 'EUR', lines }
  const unknownCustomer = await client.POST('/v1/invoices', { body })
  t.equal(unknownCustomer.response.status, 422)
  t.equal(unknownCustomer.error?.status, 422)
  t.equal(unknownCustomer.data, undefined, 'no data with an error')

  const invalid = await client.GET('/v1/customers', { params: { query: { limit: 500 } } })
  t.equal(invalid.error?.status, 400)
  t.ok(invalid.error?.errors?.some((e) => e.path.includes('limit')), 'the field is named')
})

t.test('an idempotency key replays the first response', async (t) => {
  const key = idempotencyKey()
  t.match(key['idempotency-key'], /^[0-9a-f-]{36}$/, 'a fresh key by default')
  const first = await client.POST('/v1/customers', { body: { name: 'Once' }, headers: key })
  const again = await client.POST('/v1/customers', { body: { name: 'Once' }, headers: key })
  t.equal(first.response.status, 201)
  t.equal(again.response.status, 201)
  t.equal(again.data?.id, first.data?.id, 'the same customer, created once')
  t.equal(again.response.headers.get('idempotent-replayed'), 'true')
  const other = await client.POST('/v1/customers', { body: { name: 'Twice' }, headers: key })
  t.equal(other.response.status, 409, 'the same key with another body')
  t.equal(idempotencyKey('mine')['idempotency-key'], 'mine', 'or a key of your own')
})

t.test('a wrong key is a 401, and a page that fails throws a RowfenceError with the problem', async (t) => {
  const wrong = createRowfenceClient({ baseUrl, apiKey: `rfk_${randomBytes(40).toString('base64url')}` })
  const res = await wrong.GET('/v1/tenant')
  t.equal(res.response.status, 401)
  t.equal(res.error?.status, 401)
  const error = await (async () => {
    for await (const customer of wrong.paginate('/v1/customers')) t.fail(`no customer expected: ${customer.id}`)
  })().catch((caught: unknown) => caught)
  t.ok(error instanceof RowfenceError, 'thrown by the iterator')
  t.equal((error as RowfenceError).status, 401)
  t.equal((error as RowfenceError).problem?.status, 401)
})

t.test('tenantId is sent as x-tenant-id, which must be the key\'s own tenant', async (t) => {
  const own = createRowfenceClient({ baseUrl, apiKey: tenant.key, tenantId: tenant.id })
  const mine = await own.GET('/v1/tenant')
  t.equal(mine.data?.id, tenant.id)
  const other = await provisionTenant(ctx)
  const elsewhere = createRowfenceClient({ baseUrl: `${baseUrl}/`, apiKey: tenant.key, tenantId: other.id })
  t.equal((await elsewhere.GET('/v1/tenant')).response.status, 403, 'another tenant named: refused')
})
