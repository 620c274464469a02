import { spawn } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { freePort } from '../helpers/net.ts'
import { waitUntil } from '../helpers/operator.ts'
import { startReceiver, startTestWorker } from '../helpers/webhooks.ts'

// Metering (sql/0020, src/limits/usage-meter.ts): billable work is counted once, in its own transaction;
// request counts are batched, and a crash loses at most one flush interval of them.

async function totals (c: { db: { adminUrl: string } }, tenantId: string): Promise<Record<string, number>> {
  const rows = await query<{ metric: string, amount: string }>(c.db.adminUrl,
    'SELECT metric, amount FROM usage_periods WHERE tenant_id = $1', [tenantId])
  return Object.fromEntries(rows.map((r) => [r.metric, Number(r.amount)]))
}

async function routeCounts (c: TestApp, tenantId: string): Promise<Record<string, number>> {
  const rows = await query<{ route: string, requests: string }>(c.db.adminUrl,
    'SELECT route, requests FROM usage_route_days WHERE tenant_id = $1', [tenantId])
  return Object.fromEntries(rows.map((r) => [r.route, Number(r.requests)]))
}

const LINES = [{ description: 'work', quantity: 1, unit_amount_cents: 250 }]

t.test('counts match the work done by mixed concurrent requests, failed ones included', async (t) => {
  const c = await buildTestApp(t, { DB_POOL_MAX: 8 })
  const tenant = await provisionTenant(c)
  const bystander = await provisionTenant(c)
  const status: Record<string, number[]> = {}
  type Body = Record<string, unknown>
  const call = async (route: string, method: 'GET' | 'POST', url: string, payload?: object): Promise<Body> => {
    const res = await c.app.inject(as(tenant, { method, url, ...(payload !== undefined && { payload }) }))
    ;(status[route] ??= []).push(res.statusCode)
    return res.json()
  }
  const customer = await call('POST /v1/customers', 'POST', '/v1/customers', { name: 'Ada' })
  const created = await Promise.all(Array.from({ length: 40 }, async (_, i) =>
    call('POST /v1/invoices', 'POST', '/v1/invoices', {
      // One in four names a customer that does not exist: 422, rolled back, nothing counted.
      customer_id: i % 4 === 3 ? '00000000-0000-7000-8000-000000000000' : customer.id, currency: 'EUR', lines: LINES,
    })))
  const invoices = created.filter((body) => typeof body.id === 'string').map((body) => body.id as string)
  // Each invoice finalized twice at once: one 200, one 409 for the one that lost.
  await Promise.all([
    ...invoices.slice(0, 10).flatMap((id) => [0, 1].map(async () =>
      call('POST /v1/invoices/:id/finalize', 'POST', `/v1/invoices/${id}/finalize`))),
    ...invoices.map(async (id) => call('GET /v1/invoices/:id', 'GET', `/v1/invoices/${id}`)),
    ...Array.from({ length: 5 }, async () =>
      call('GET /v1/invoices/:id', 'GET', '/v1/invoices/00000000-0000-7000-8000-000000000001')),
  ])
  // Requests that are not the tenant's: a made-up key, and another tenant's.
  const forged = await c.app.inject({
    method: 'GET', url: '/v1/invoices', headers: { authorization: `Bearer ${tenant.key.slice(0, -4)}AAAA` },
  })
  t.equal(forged.statusCode, 401)
  t.equal((await c.app.inject(as(bystander, { method: 'GET', url: '/v1/invoices' }))).statusCode, 200)

  const count = (route: string, code: number): number => (status[route] ?? []).filter((s) => s === code).length
  t.equal(count('POST /v1/invoices', 201), 30)
  t.equal(count('POST /v1/invoices', 422), 10)
  t.equal(count('POST /v1/invoices/:id/finalize', 200), 10)
  t.equal(count('POST /v1/invoices/:id/finalize', 409), 10)

  // Billable counts are there at once: written with the work.
  const billable = await totals(c, tenant.id)
  t.equal(billable.invoices_created, 30, 'each invoice created counted once; none for the failed creates')
  t.equal(billable.invoices_finalized, 10, 'each finalize counted once; none for the ones that lost')
  t.equal(billable.requests, undefined, 'request counts wait for the flush')

  await c.app.usageMeter.flush()
  const made = Object.values(status).reduce((n, codes) => n + codes.length, 0)
  const after = await totals(c, tenant.id)
  t.equal(after.requests, made, 'every request of the tenant, whatever its status; not the forged one')
  const perRoute = Object.fromEntries(Object.entries(status).map(([route, codes]) => [route, codes.length]))
  t.same(await routeCounts(c, tenant.id), perRoute)
  t.equal((await totals(c, bystander.id)).requests, 1)
  const days = await query<{ amount: string }>(c.db.adminUrl,
    "SELECT amount FROM usage_days WHERE tenant_id = $1 AND metric = 'invoices_created'", [tenant.id])
  t.same(days.map((d) => Number(d.amount)), [30], 'the same count per day')

  // The tenant sees it too.
  const usage = await c.app.inject(as(tenant, { method: 'GET', url: '/v1/usage' }))
  const listed = usage.json().counters as Array<{ name: string, used: number }>
  const counters = new Map(listed.map((x) => [x.name, x.used]))
  t.equal(counters.get('invoices_created'), 30)
  t.equal(counters.get('invoices_finalized'), 10)
  t.equal(counters.get('customers'), 1)
  t.equal(usage.json().days.length, 1)
})

t.test('webhook deliveries and export bytes are metered by the worker, once each', async (t) => {
  const c = await buildTestApp(t, { WEBHOOK_ALLOW_PRIVATE_TARGETS: true })
  const tenant = await provisionTenant(c)
  const receiver = await startReceiver(t)
  // The first attempt fails: only the delivery that succeeds counts.
  receiver.answer((_request, i) => ({ status: i === 0 ? 500 : 204 }))
  const endpoint = await c.app.inject(as(tenant, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: receiver.url, event_types: ['customer.created'] },
  }))
  t.equal(endpoint.statusCode, 201)
  await startTestWorker(t, c)
  const created = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'B' } }))
  t.equal(created.statusCode, 201)
  await waitUntil('the delivery to succeed', async () => (await totals(c, tenant.id)).events_delivered === 1, 20_000)
  t.equal(receiver.received.length, 2, 'two attempts, one counted')

  const requested = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/exports' }))
  t.equal(requested.statusCode, 202, requested.body)
  const id = requested.json().id as string
  let bytes = 0
  await waitUntil('the export to be ready', async () => {
    const res = await c.app.inject(as(tenant, { method: 'GET', url: `/v1/exports/${id}` }))
    bytes = res.json().progress.bytes as number
    return res.json().status === 'ready'
  }, 20_000)
  t.ok(bytes > 0)
  t.equal((await totals(c, tenant.id)).export_bytes, bytes, 'the export\'s bytes, counted when it became ready')

  // With the period's export bytes used up, the next export is refused before any work.
  const limited = await c.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${tenant.id}/limits`,
    headers: { authorization: `Bearer ${c.adminToken}` },
    payload: { plan: null, overrides: { export_bytes: bytes } },
  })
  t.equal(limited.statusCode, 200)
  const refused = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/exports' }))
  t.equal(refused.statusCode, 403)
  t.match(refused.json(), { type: 'https://rowfence.dev/problems/quota-exceeded', quota: 'export_bytes', used: bytes })
})

t.test('a crash loses at most one flush interval of request counts, and no billable count', async (t) => {
  // This in-process app only sets the tenant up: its own count is written at teardown, after the checks.
  const c = await buildTestApp(t, { USAGE_FLUSH_MS: 600_000 })
  const tenant: ProvisionedTenant = await provisionTenant(c)
  const customer = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'C' } }))
  const port = await freePort()
  const flushMs = 400
  const child = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/server.ts')], {
    env: {
      PATH: process.env.PATH ?? '',
      LOG_LEVEL: 'warn',
      PORT: String(port),
      MAX_EVENT_LOOP_DELAY_MS: '0',
      DATABASE_URL: c.db.ownerUrl,
      APP_DATABASE_URL: c.db.appUrl,
      ADMIN_TOKEN: 'x'.repeat(40),
      RUN_WORKER: 'false',
      USAGE_FLUSH_MS: String(flushMs),
      LIMIT_REQUESTS_PER_SECOND: 'unlimited',
      LIMIT_BURST: 'unlimited',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  t.teardown(() => { child.kill('SIGKILL') })
  const base = `http://127.0.0.1:${port}`
  await waitUntil('the server to listen', async () => fetch(`${base}/healthz`).then((r) => r.ok, () => false), 30_000)
    .catch((error: unknown) => { throw new Error(`${String(error)}: ${stderr}`) })
  const create = async (): Promise<number> => {
    const res = await fetch(`${base}/v1/invoices`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ customer_id: customer.json().id, currency: 'EUR', lines: LINES }),
    })
    await res.arrayBuffer()
    return res.status
  }
  const first = await Promise.all(Array.from({ length: 20 }, create))
  t.equal(first.filter((s) => s === 201).length, 20, stderr)
  // A flush interval later, the first requests are written.
  await waitUntil('the first counts to be flushed', async () => (await totals(c, tenant.id)).requests === 20, 10_000)
  const second = await Promise.all(Array.from({ length: 10 }, create))
  child.kill('SIGKILL') // right after answering: their counts were not flushed yet
  await exited
  t.equal(second.filter((s) => s === 201).length, 10)
  const after = await totals(c, tenant.id)
  t.equal(after.invoices_created, 30, 'every invoice created is counted: billable counts commit with the work')
  t.ok(after.requests! >= 20 && after.requests! <= 30, `lost at most the last interval's requests (${after.requests})`)
})

t.test('a request with an invalid body is counted, and judged for its rate like any other', async (t) => {
  const c = await buildTestApp(t, { LIMIT_BURST: 3, LIMIT_REQUESTS_PER_SECOND: 100 })
  const tenant = await provisionTenant(c)
  // Known to this instance from here on: its key and its tenant's limits.
  t.equal((await c.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) {
    const res = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload: { currency: 'EURO' } }))
    statuses.push(res.statusCode)
  }
  // Within one second: the burst of 3 holds two more, then the rate refuses (all four in the same second
  // unless the machine stalls, when the window restarts and a later one is a 400 too).
  t.ok(statuses.includes(400), `invalid bodies are still answered 400 (${statuses.join(', ')})`)
  t.ok(statuses.every((s) => s === 400 || s === 429), 'and nothing else')
  await c.app.usageMeter.flush()
  const after = await totals(c, tenant.id)
  t.equal(after.requests, 5, 'all five requests counted, invalid and refused ones included')
  t.equal(after.refusals_rate ?? 0, statuses.filter((s) => s === 429).length, 'each refusal counted too')
})
