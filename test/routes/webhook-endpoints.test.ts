import pg from 'pg'
import t from 'tap'
import { openSecret, parseServerKey } from '../../src/webhooks/secret-box.ts'
import {
  as, buildTestApp, provisionTenant, TEST_WEBHOOK_SECRET_KEY, type ProvisionedTenant, type TestApp,
} from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { scopingGaps, scopingValues, tenantReferences } from '../helpers/scoping.ts'

// No worker in these apps: the queued jobs stay in the queue, where the tests look for them.
const ctx = await buildTestApp(t, { RUN_WORKER: false, WEBHOOK_ALLOW_PRIVATE_TARGETS: false })
const alice = await provisionTenant(ctx)
const bob = await provisionTenant(ctx)
const serverKey = parseServerKey(TEST_WEBHOOK_SECRET_KEY)

interface Endpoint {
  id: string
  url: string
  description: string
  event_types: string[]
  status: 'enabled' | 'disabled'
  disabled_reason: string | null
  failing_since: string | null
  previous_secret_expires_at: string | null
  created_at: string
  updated_at: string
  secret?: string
}
interface Delivery {
  id: string
  endpoint_id: string
  event_id: string
  event_type: string
  status: string
  attempts: number
  attempts_detail: Array<Record<string, unknown>>
}
interface Page<T> { data: T[], next_cursor: string | null }

const ENDPOINT_FIELDS = ['created_at', 'description', 'disabled_reason', 'event_types', 'failing_since', 'id',
  'previous_secret_expires_at', 'status', 'updated_at', 'url']

function call (who: { key: string }, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object) {
  return ctx.app.inject(as(who, { method, url, ...(payload !== undefined && { payload }) }))
}

async function createEndpoint (
  who: ProvisionedTenant, payload: Record<string, unknown> = {}, app: TestApp = ctx
): Promise<Endpoint> {
  const res = await app.app.inject(as(who, {
    method: 'POST',
    url: '/v1/webhook-endpoints',
    payload: { url: 'https://hooks.example.com/in', event_types: ['*'], ...payload },
  }))
  if (res.statusCode !== 201) throw new Error(`creating an endpoint failed: ${res.statusCode} ${res.body}`)
  return res.json<Endpoint>()
}

/** A statement as the owner role, bound to a tenant (the tables force RLS on their owner too). */
async function asOwner<R extends pg.QueryResultRow> (tenantId: string, text: string, values: unknown[] = []) {
  const client = new pg.Client({ connectionString: ctx.db.ownerUrl })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenantId])
    const { rows } = await client.query<R>(text, values)
    await client.query('COMMIT')
    return rows
  } finally {
    await client.end()
  }
}

interface SealedRow { secret_sealed: string, previous_secret_sealed: string | null, previous_secret_expires_at: Date }
const sealedRow = async (tenantId: string, id: string): Promise<SealedRow> => (await asOwner<SealedRow>(tenantId,
  'SELECT secret_sealed, previous_secret_sealed, previous_secret_expires_at FROM webhook_endpoints WHERE id = $1',
  [id]))[0]!

/** The queued jobs naming a row (graphile_worker.jobs leaves the payload out: read the table behind it). */
const jobsFor = async (ref: string): Promise<Array<{ task: string, payload: unknown }>> => query(ctx.db.ownerUrl,
  `SELECT t.identifier AS task, j.payload FROM graphile_worker._private_jobs j
     JOIN graphile_worker._private_tasks t ON t.id = j.task_id WHERE j.payload->>'ref' = $1`, [ref])

const deliveryCount = async (endpointId: string): Promise<number> => Number((await query<{ n: string }>(
  ctx.db.adminUrl, 'SELECT count(*) AS n FROM webhook_deliveries WHERE endpoint_id = $1', [endpointId]))[0]!.n)

async function latestEvent (who: ProvisionedTenant, type: string): Promise<{ id: string, data: unknown }> {
  const res = await call(who, 'GET', `/v1/events?type=${type}&limit=1`)
  return res.json<Page<{ id: string, data: unknown }>>().data[0]!
}

t.test('create, read, list, update and delete a webhook endpoint', async (t) => {
  const created = await call(alice, 'POST', '/v1/webhook-endpoints', {
    url: 'https://hooks.example.com/crud', event_types: ['invoice.finalized', 'customer.*'], description: 'books',
  })
  t.equal(created.statusCode, 201)
  const endpoint = created.json<Endpoint>()
  t.match(endpoint, {
    url: 'https://hooks.example.com/crud',
    event_types: ['invoice.finalized', 'customer.*'],
    description: 'books',
    status: 'enabled',
    disabled_reason: null,
    failing_since: null,
    previous_secret_expires_at: null,
    secret: /^whsec_[A-Za-z0-9+/]{43}=$/,
  })
  t.same(Object.keys(endpoint).sort(), [...ENDPOINT_FIELDS, 'secret'].sort(), 'no tenant_id, nothing sealed')
  const { secret: _secret, ...shown } = endpoint

  const read = await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)
  t.equal(read.statusCode, 200)
  t.same(read.json(), shown, 'retrieved: the same, without the secret')
  const listed = await call(alice, 'GET', '/v1/webhook-endpoints')
  t.same(listed.json<Page<Endpoint>>().data.find((e) => e.id === endpoint.id), shown, 'listed alike')

  const patched = await call(alice, 'PATCH', `/v1/webhook-endpoints/${endpoint.id}`, {
    url: 'https://hooks.example.com/v2', event_types: ['*'], description: '', status: 'disabled',
  })
  t.equal(patched.statusCode, 200)
  t.match(patched.json<Endpoint>(), { url: 'https://hooks.example.com/v2', event_types: ['*'], status: 'disabled' })
  const updated = await latestEvent(alice, 'webhook_endpoint.updated')
  t.same(updated.data, patched.json(), 'the update is an event with the new state')

  const deleted = await call(alice, 'DELETE', `/v1/webhook-endpoints/${endpoint.id}`)
  t.equal(deleted.statusCode, 204)
  t.equal((await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)).statusCode, 404)
  t.equal((await call(alice, 'DELETE', `/v1/webhook-endpoints/${endpoint.id}`)).statusCode, 404)
  t.same((await latestEvent(alice, 'webhook_endpoint.deleted')).data, { id: endpoint.id })
})

t.test('the signing secret is shown once, and stored sealed to its tenant and endpoint', async (t) => {
  const endpoint = await createEndpoint(alice, { description: 'shown once' })
  const secret = endpoint.secret!
  const bodies = [
    (await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)).body,
    (await call(alice, 'GET', '/v1/webhook-endpoints?limit=200')).body,
    (await call(alice, 'GET', '/v1/events?limit=200')).body,
    (await call(alice, 'GET', '/v1/audit-events?limit=200')).body,
  ]
  const row = await sealedRow(alice.id, endpoint.id)
  for (const body of bodies) {
    t.notOk(body.includes(secret.slice('whsec_'.length)), 'never the secret again')
    t.notOk(body.includes(row.secret_sealed) || body.includes('sealed'), 'nor its sealed form')
  }
  const { secret: _created, ...state } = endpoint
  t.same((await latestEvent(alice, 'webhook_endpoint.created')).data, state,
    'the creation event holds the endpoint without its secret')

  t.not(row.secret_sealed, secret)
  t.notOk(row.secret_sealed.includes(secret.slice('whsec_'.length)), 'not the plaintext')
  t.equal(openSecret(serverKey, row.secret_sealed, `${alice.id}:${endpoint.id}`), secret, 'opens with the key')
  t.throws(() => openSecret(serverKey, row.secret_sealed, `${bob.id}:${endpoint.id}`),
    'and only in its own tenant and endpoint')
})

t.test('rotating the secret keeps the previous one, sealed, until the grace period ends', async (t) => {
  const endpoint = await createEndpoint(alice, { description: 'rotating' })
  const before = await sealedRow(alice.id, endpoint.id)
  const started = Date.now()
  const res = await call(alice, 'POST', `/v1/webhook-endpoints/${endpoint.id}/rotate-secret`)
  t.equal(res.statusCode, 200)
  const rotated = res.json<Endpoint>()
  t.match(rotated.secret, /^whsec_/)
  t.not(rotated.secret, endpoint.secret, 'a new secret')
  const after = await sealedRow(alice.id, endpoint.id)
  t.equal(after.previous_secret_sealed, before.secret_sealed, 'the previous one, still sealed')
  t.equal(openSecret(serverKey, after.previous_secret_sealed!, `${alice.id}:${endpoint.id}`), endpoint.secret)
  t.equal(openSecret(serverKey, after.secret_sealed, `${alice.id}:${endpoint.id}`), rotated.secret)
  const expires = after.previous_secret_expires_at.getTime()
  // WEBHOOK_SECRET_GRACE_MS defaults to a day.
  t.ok(expires >= started + 86_400_000 - 5_000 && expires <= Date.now() + 86_400_000 + 5_000, 'now + the grace')
  t.equal(rotated.previous_secret_expires_at, after.previous_secret_expires_at.toISOString())
  const event = await latestEvent(alice, 'webhook_endpoint.secret_rotated')
  const { secret: _rotated, ...state } = rotated
  t.same(event.data, state, 'an event, without the secret')
  const got = await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)
  t.notOk('secret' in got.json<Endpoint>())
})

t.test('refused URLs and event types', async (t) => {
  for (const url of ['http://hooks.example.com/in', 'https://10.0.0.1/in', 'https://127.0.0.1/in',
    'https://169.254.169.254/latest', 'https://[::1]/in', 'ftp://hooks.example.com', 'https://user:pw@example.com/',
    'not a url']) {
    const res = await call(alice, 'POST', '/v1/webhook-endpoints', { url, event_types: ['*'] })
    t.equal(res.statusCode, 422, url)
    t.match(res.json(), { errors: [{ path: 'body/url' }] }, `${url}: ${res.json<{ detail: string }>().detail}`)
  }
  t.match((await call(alice, 'POST', '/v1/webhook-endpoints', { url: 'https://10.0.0.1/', event_types: ['*'] }))
    .json(), { detail: /private/ }, 'the problem names the reason')
  const bad = [
    { event_types: [] }, { event_types: ['invoice'] }, { event_types: ['Invoice.paid'] }, { event_types: ['*.*'] },
    { event_types: ['invoice.*.x'] }, { event_types: ['a.b', 'a.b'] },
    { event_types: Array.from({ length: 51 }, (_, i) => `r${'x'.repeat(i % 20)}.a`) },
    { event_types: ['*'], description: 'x'.repeat(501) }, { event_types: ['*'], secret: 'whsec_mine' },
  ]
  for (const body of bad) {
    const res = await call(alice, 'POST', '/v1/webhook-endpoints', { url: 'https://hooks.example.com/', ...body })
    t.equal(res.statusCode, 400, JSON.stringify(body).slice(0, 80))
  }
  const endpoint = await createEndpoint(alice)
  const patch = (payload: object) => call(alice, 'PATCH', `/v1/webhook-endpoints/${endpoint.id}`, payload)
  t.equal((await patch({ url: 'http://hooks.example.com/' })).statusCode, 422)
  t.equal((await patch({ url: 'https://192.168.1.1/' })).statusCode, 422)
  t.equal((await patch({})).statusCode, 400)
  t.equal((await patch({ status: 'paused' })).statusCode, 400)
  t.equal((await patch({ secret_sealed: 'v1.a.b.c' })).statusCode, 400)
  t.equal((await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)).json<Endpoint>().url, endpoint.url)
})

t.test('WEBHOOK_ALLOW_PRIVATE_TARGETS opens http and private addresses, never the metadata service', async (t) => {
  const open = await buildTestApp(t, { RUN_WORKER: false, WEBHOOK_ALLOW_PRIVATE_TARGETS: true }, ctx.db)
  const local = await createEndpoint(alice, { url: 'http://127.0.0.1:8080/hook' }, open)
  t.equal(local.url, 'http://127.0.0.1:8080/hook')
  const metadata = await open.app.inject(as(alice, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: 'http://169.254.169.254/', event_types: ['*'] },
  }))
  t.equal(metadata.statusCode, 422)
})

t.test('without WEBHOOK_SECRET_KEY, endpoints cannot be created nor rotated (503)', async (t) => {
  const endpoint = await createEndpoint(alice)
  const keyless = await buildTestApp(t, { RUN_WORKER: false, WEBHOOK_SECRET_KEY: undefined }, ctx.db)
  for (const [method, url] of [['POST', '/v1/webhook-endpoints'],
    ['POST', `/v1/webhook-endpoints/${endpoint.id}/rotate-secret`]] as const) {
    const res = await keyless.app.inject(as(alice, {
      method, url, ...(url.endsWith('endpoints') && { payload: { url: 'https://example.com/', event_types: ['*'] } }),
    }))
    t.equal(res.statusCode, 503, url)
    t.match(res.json(), { detail: /webhook signing is not configured/ })
  }
  t.equal((await sealedRow(alice.id, endpoint.id)).previous_secret_sealed, null, 'nothing rotated')
})

t.test('a credential without the admin scope can neither manage nor read endpoints', async (t) => {
  const endpoint = await createEndpoint(alice)
  await call(alice, 'POST', '/v1/customers', { name: 'Visible' })
  const writer = (await call(alice, 'POST', '/v1/api-keys', { name: 'writer', scopes: ['read', 'write'] }))
    .json<{ key: string }>()
  const event = await latestEvent(alice, 'webhook_endpoint.created')
  const attempts: Array<[method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object]> = [
    ['POST', '/v1/webhook-endpoints', { url: 'https://example.com/', event_types: ['*'] }],
    ['GET', '/v1/webhook-endpoints'],
    ['GET', `/v1/webhook-endpoints/${endpoint.id}`],
    ['PATCH', `/v1/webhook-endpoints/${endpoint.id}`, { status: 'disabled' }],
    ['DELETE', `/v1/webhook-endpoints/${endpoint.id}`],
    ['POST', `/v1/webhook-endpoints/${endpoint.id}/rotate-secret`],
    ['GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries`],
    ['POST', `/v1/events/${event.id}/redeliver`, {}],
  ]
  for (const [method, url, payload] of attempts) {
    t.equal((await call(writer, method, url, payload)).statusCode, 403, `${method} ${url}`)
  }
  const seen = (await call(writer, 'GET', '/v1/events?limit=200')).json<Page<{ type: string }>>().data
  t.ok(seen.length > 0 && seen.every((e) => !e.type.startsWith('webhook_endpoint.')), 'nor its events')
  t.equal((await call(writer, 'GET', `/v1/events/${event.id}`)).statusCode, 404)
  t.match((await call(alice, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)).json(), { status: 'enabled' })
})

t.test("tenant B cannot reach tenant A's endpoints, deliveries or events", async (t) => {
  const target = await createEndpoint(alice, { description: "alice's" })
  await call(alice, 'POST', '/v1/customers', { name: 'Fanned' })
  const aliceEvent = await latestEvent(alice, 'customer.created')
  const before = await sealedRow(alice.id, target.id)
  const deliveries = await deliveryCount(target.id)
  t.ok(deliveries > 0, "A's endpoint has deliveries")
  const base = `/v1/webhook-endpoints/${target.id}`
  const attacks: Array<[method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object]> = [
    ['GET', base],
    ['PATCH', base, { url: 'https://attacker.example.com/', status: 'enabled' }],
    ['DELETE', base],
    ['POST', `${base}/rotate-secret`],
    ['GET', `${base}/deliveries`],
    ['POST', `/v1/events/${aliceEvent.id}/redeliver`, {}],
    ['POST', `/v1/events/${aliceEvent.id}/redeliver`, { endpoint_id: target.id }],
  ]
  for (const [method, url, payload] of attacks) {
    const res = await call(bob, method, url, payload)
    t.equal(res.statusCode, 404, `${method} ${url}`)
    t.notMatch(res.body, /hooks\.example\.com|alice's/, 'nothing of A in the answer')
  }
  t.same((await call(bob, 'GET', '/v1/webhook-endpoints')).json<Page<Endpoint>>().data, [], "B's list is empty")

  // B's own event, sent to A's endpoint id: the endpoint does not exist for B.
  await call(bob, 'POST', '/v1/customers', { name: 'Mine' })
  const bobEvent = await latestEvent(bob, 'customer.created')
  const crossed = await call(bob, 'POST', `/v1/events/${bobEvent.id}/redeliver`, { endpoint_id: target.id })
  t.equal(crossed.statusCode, 404)
  t.same(await call(bob, 'POST', `/v1/events/${bobEvent.id}/redeliver`, {}).then((r) => r.json()), { data: [] },
    "B's redelivery reaches none of A's endpoints")

  t.equal(await deliveryCount(target.id), deliveries, "no delivery was added to A's endpoint (B's events neither)")
  t.same(await sealedRow(alice.id, target.id), before, "A's secret is untouched")
  const still = await call(alice, 'GET', base)
  t.match(still.json(), { url: target.url, description: "alice's", status: 'enabled' }, 'and its settings')
})

t.test('a new event creates a delivery and its job for each subscribed endpoint, and for no other', async (t) => {
  const carol = await provisionTenant(ctx)
  const customers = await createEndpoint(carol, { event_types: ['customer.created'] })
  const invoices = await createEndpoint(carol, { event_types: ['invoice.*'] })
  const disabled = await createEndpoint(carol, { event_types: ['customer.*'] })
  await call(carol, 'PATCH', `/v1/webhook-endpoints/${disabled.id}`, { status: 'disabled' })
  t.equal((await call(carol, 'POST', '/v1/customers', { name: 'Ada' })).statusCode, 201)
  const event = await latestEvent(carol, 'customer.created')
  const page = (await call(carol, 'GET', `/v1/webhook-endpoints/${customers.id}/deliveries`)).json<Page<Delivery>>()
  t.equal(page.data.length, 1)
  t.match(page.data[0], {
    endpoint_id: customers.id,
    event_id: event.id,
    event_type: 'customer.created',
    status: 'pending',
    attempts: 0,
    attempts_detail: [],
  })
  const jobs = await jobsFor(page.data[0]!.id)
  t.same(jobs, [{ task: 'deliver_webhook', payload: { tenant_id: carol.id, ref: page.data[0]!.id } }],
    'its job is queued')
  for (const other of [invoices, disabled]) {
    const none = await call(carol, 'GET', `/v1/webhook-endpoints/${other.id}/deliveries`)
    t.same(none.json<Page<Delivery>>().data, [], `nothing for ${other.event_types.join()}`)
  }
})

t.test('redelivering an event queues a new delivery with its job', async (t) => {
  const dave = await provisionTenant(ctx)
  const endpoint = await createEndpoint(dave, { event_types: ['customer.*'] })
  await call(dave, 'POST', '/v1/customers', { name: 'Again' })
  const event = await latestEvent(dave, 'customer.created')
  const res = await call(dave, 'POST', `/v1/events/${event.id}/redeliver`, { endpoint_id: endpoint.id })
  t.equal(res.statusCode, 202)
  const [delivery] = res.json<{ data: Delivery[] }>().data
  t.match(delivery, { endpoint_id: endpoint.id, event_id: event.id, event_type: 'customer.created', status: 'pending' })
  t.same(await jobsFor(delivery!.id), [{ task: 'deliver_webhook', payload: { tenant_id: dave.id, ref: delivery!.id } }],
    'its job is queued, naming the delivery')
  const listed = (await call(dave, 'GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries`)).json<Page<Delivery>>()
  t.same(listed.data.map((d) => d.event_id), [event.id, event.id], 'the first delivery and the new one')

  const bare = await ctx.app.inject(as(dave, { method: 'POST', url: `/v1/events/${event.id}/redeliver` }))
  t.equal(bare.statusCode, 202, 'no body: every subscribed endpoint')
  t.same(bare.json<{ data: Delivery[] }>().data.map((d) => d.endpoint_id), [endpoint.id])

  const unknown = '01900000-0000-7000-8000-00000000beef'
  t.equal((await call(dave, 'POST', `/v1/events/${unknown}/redeliver`, {})).statusCode, 404, 'an unknown event')
  t.equal((await call(dave, 'POST', `/v1/events/${event.id}/redeliver`, { endpoint_id: unknown })).statusCode, 404,
    'an unknown endpoint')
  await call(dave, 'PATCH', `/v1/webhook-endpoints/${endpoint.id}`, { status: 'disabled' })
  const refused = await call(dave, 'POST', `/v1/events/${event.id}/redeliver`, { endpoint_id: endpoint.id })
  t.equal(refused.statusCode, 409, 'a disabled endpoint')
  t.equal(await deliveryCount(endpoint.id), 3, 'nothing queued by the refusals')
})

t.test('deliveries page newest first, filter by status and show their attempts', async (t) => {
  const erin = await provisionTenant(ctx)
  const endpoint = await createEndpoint(erin, { event_types: ['customer.created'] })
  for (let i = 0; i < 5; i++) await call(erin, 'POST', '/v1/customers', { name: `c${i}` })
  const events = (await call(erin, 'GET', '/v1/events?type=customer.created')).json<Page<{ id: string }>>().data
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const after = cursor === null ? '' : `&cursor=${cursor}`
    const url: string = `/v1/webhook-endpoints/${endpoint.id}/deliveries?limit=2${after}`
    const page: Page<Delivery> = (await call(erin, 'GET', url)).json<Page<Delivery>>()
    seen.push(...page.data.map((d) => d.event_id))
    cursor = page.next_cursor
  } while (cursor !== null)
  t.same(seen, events.map((e) => e.id), 'every delivery once, newest first')

  const [first] = (await call(erin, 'GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries?limit=1`))
    .json<Page<Delivery>>().data
  await query(ctx.db.adminUrl, `INSERT INTO webhook_attempts (tenant_id, delivery_id, attempt, started_at,
    status_code, latency_ms, error, response_excerpt)
    VALUES ($1, $2, 1, now(), 500, 42, 'HTTP 500', 'oops'), ($1, $2, 2, now(), 200, 7, NULL, 'ok')`,
  [erin.id, first!.id])
  await query(ctx.db.adminUrl, "UPDATE webhook_deliveries SET status = 'succeeded', attempts = 2 WHERE id = $1",
    [first!.id])
  const succeeded = (await call(erin, 'GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries?status=succeeded`))
    .json<Page<Delivery>>().data
  t.equal(succeeded.length, 1)
  t.match(succeeded[0], {
    id: first!.id,
    status: 'succeeded',
    attempts: 2,
    attempts_detail: [
      { attempt: 1, status_code: 500, latency_ms: 42, error: 'HTTP 500', response_excerpt: 'oops', started_at: /Z$/ },
      { attempt: 2, status_code: 200, latency_ms: 7, error: null, response_excerpt: 'ok' },
    ],
  })
  const pending = (await call(erin, 'GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries?status=pending`))
    .json<Page<Delivery>>().data
  t.equal(pending.length, 4)
  for (const qs of ['status=done', 'limit=0', 'cursor=bm90LWEtY3Vyc29y']) {
    const res = await call(erin, 'GET', `/v1/webhook-endpoints/${endpoint.id}/deliveries?${qs}`)
    t.equal(res.statusCode, 400, qs)
  }
})

t.test('re-enabling clears failing_since and disabled_reason; deleting removes the deliveries', async (t) => {
  const frank = await provisionTenant(ctx)
  const endpoint = await createEndpoint(frank, { event_types: ['customer.*'] })
  await call(frank, 'POST', '/v1/customers', { name: 'x' })
  await query(ctx.db.adminUrl, `UPDATE webhook_endpoints SET status = 'disabled',
    failing_since = now() - interval '4 days', disabled_reason = 'failing for 3 days' WHERE id = $1`, [endpoint.id])
  const disabled = (await call(frank, 'GET', `/v1/webhook-endpoints/${endpoint.id}`)).json<Endpoint>()
  t.match(disabled, { status: 'disabled', disabled_reason: 'failing for 3 days', failing_since: /Z$/ })
  const enabled = await call(frank, 'PATCH', `/v1/webhook-endpoints/${endpoint.id}`, { status: 'enabled' })
  t.match(enabled.json(), { status: 'enabled', disabled_reason: null, failing_since: null })

  t.equal(await deliveryCount(endpoint.id), 1)
  t.equal((await call(frank, 'DELETE', `/v1/webhook-endpoints/${endpoint.id}`)).statusCode, 204)
  t.equal(await deliveryCount(endpoint.id), 0, 'the deliveries went with it')
})

t.test("every statement the webhook routes send to a tenant table is scoped to the caller's tenant", async (t) => {
  const statements: Array<{ text: string, values: readonly unknown[] }> = []
  const watched = await buildTestApp(t, { RUN_WORKER: false }, ctx.db, {
    onQuery: (text, values) => { statements.push({ text, values }) },
  })
  const grace = await provisionTenant(watched)
  statements.length = 0 // the operator's provisioning is not under test here
  const endpoint = await createEndpoint(grace, { event_types: ['customer.*'] }, watched)
  const send = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object) =>
    watched.app.inject(as(grace, { method, url, ...(payload !== undefined && { payload }) }))
  await send('POST', '/v1/customers', { name: 'Scoped' })
  const event = (await send('GET', '/v1/events?type=customer.created')).json<Page<{ id: string }>>().data[0]!
  const base = `/v1/webhook-endpoints/${endpoint.id}`
  await send('GET', '/v1/webhook-endpoints?limit=1')
  await send('GET', base)
  await send('PATCH', base, { description: 'scoped' })
  await send('POST', `${base}/rotate-secret`)
  await send('POST', `/v1/events/${event.id}/redeliver`, {})
  await send('POST', `/v1/events/${event.id}/redeliver`, { endpoint_id: endpoint.id })
  const first = (await send('GET', `${base}/deliveries?limit=1`)).json<Page<Delivery>>()
  await send('GET', `${base}/deliveries?limit=1&status=pending&cursor=${first.next_cursor ?? ''}`)
  await send('DELETE', base)

  const tables = watched.app.tenantTables
  const touching = statements.filter((s) => tenantReferences(s.text, tables) > 0)
  t.ok(touching.length > 10, `${touching.length} statements checked`)
  t.ok(touching.some((s) => /"webhook_deliveries" as "cursor"/.test(s.text)), 'the cursor lookup among them')
  for (const { text, values } of touching) {
    const label = text.replace(/\s+/g, ' ').slice(0, 160)
    t.same(scopingGaps(text, tables), [], label)
    const scoped = scopingValues(text, values, tables).filter((v) => v.column === 'tenant')
    t.ok(scoped.length > 0 && scoped.every((v) => String(v.value) === grace.id), `bound to the tenant: ${label}`)
  }
})
