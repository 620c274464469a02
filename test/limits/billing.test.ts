import { Readable } from 'node:stream'
import pg from 'pg'
import t from 'tap'
import { allocateShard } from '../../src/tenancy/shards.ts'
import { importTenant } from '../../src/tenancy/tenant-import.ts'
import {
  as, buildTestApp, provisionTenant, TEST_EXPORT_SIGNING_KEY, type ProvisionedTenant, type TestApp,
} from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { operator, waitUntil } from '../helpers/operator.ts'
import { startReceiver, startTestWorker } from '../helpers/webhooks.ts'

// Billing hooks (usage.threshold_reached, usage.period_closed) are events, delivered like any other; limits
// and usage travel with a tenant's export and import, and go with its erasure.

async function setLimits (c: TestApp, tenant: ProvisionedTenant, body: object): Promise<void> {
  const res = await c.app.inject({
    method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/limits`, headers: operator(c), payload: body,
  })
  if (res.statusCode !== 200) throw new Error(`limits: ${res.statusCode} ${res.body}`)
}

async function invoice (c: TestApp, tenant: ProvisionedTenant, customerId: string): Promise<number> {
  const res = await c.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customerId, currency: 'EUR', lines: [{ description: 'x', quantity: 1, unit_amount_cents: 5 }],
    },
  }))
  return res.statusCode
}

async function customer (c: TestApp, tenant: ProvisionedTenant): Promise<string> {
  const res = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Billy' } }))
  if (res.statusCode !== 201) throw new Error(`customer: ${res.statusCode} ${res.body}`)
  return res.json().id as string
}

t.test('threshold notices reach the tenant\'s webhook endpoint', async (t) => {
  const c = await buildTestApp(t, { WEBHOOK_ALLOW_PRIVATE_TARGETS: true })
  const tenant = await provisionTenant(c)
  const receiver = await startReceiver(t)
  const endpoint = await c.app.inject(as(tenant, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: receiver.url, event_types: ['usage.*'] },
  }))
  t.equal(endpoint.statusCode, 201)
  await setLimits(c, tenant, { plan: null, overrides: { invoices_created: 4 } })
  await startTestWorker(t, c)
  const customerId = await customer(c, tenant)
  for (let i = 0; i < 4; i++) t.equal(await invoice(c, tenant, customerId), 201)
  await waitUntil('both notices to arrive', async () => receiver.received.length >= 2, 20_000)
  // The webhook's data is the event, whose own data holds the notice.
  type Delivered = { type: string, data: { data: Record<string, unknown> } }
  const bodies = receiver.received.map((r) => JSON.parse(r.body) as Delivered)
  t.same(bodies.map((b) => b.type), ['usage.threshold_reached', 'usage.threshold_reached'])
  t.same(bodies.map((b) => [b.data.data.threshold_percent, b.data.data.used]).sort(), [[100, 4], [80, 4]].sort(),
    '80 % of 4 is reached at the 4th invoice, with 100 %')
  t.equal(await invoice(c, tenant, customerId), 403)
})

t.test('a period that is over is closed once per tenant, with its totals', async (t) => {
  const c = await buildTestApp(t)
  const tenant = await provisionTenant(c)
  const quiet = await provisionTenant(c)
  // Last month's usage, as the database would have counted it then.
  await query(c.db.adminUrl, `
    INSERT INTO usage_periods (tenant_id, period, metric, amount)
    VALUES ($1, usage_period() - interval '1 month', 'invoices_created', 7),
           ($1, usage_period() - interval '1 month', 'requests', 120)`, [tenant.id])
  const sweep = async (): Promise<number> => {
    const res = await c.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: operator(c) })
    t.equal(res.statusCode, 200, res.body)
    return res.json().usage_periods_closed as number
  }
  const [a, b] = await Promise.all([sweep(), sweep()])
  t.equal(a + b, 1, 'two sweeps at once close the period once')
  t.equal(await sweep(), 0, 'and a later sweep finds nothing to close')
  const events = await c.app.inject(as(tenant, { method: 'GET', url: '/v1/events?type=usage.period_closed' }))
  const data = events.json().data as Array<{ data: { period: string, totals: Record<string, number> } }>
  t.equal(data.length, 1)
  const last = new Date()
  last.setUTCDate(1)
  last.setUTCMonth(last.getUTCMonth() - 1)
  t.equal(data[0]!.data.period, last.toISOString().slice(0, 7))
  t.same(data[0]!.data.totals, { invoices_created: 7, requests: 120 })
  const none = await c.app.inject(as(quiet, { method: 'GET', url: '/v1/events?type=usage.period_closed' }))
  t.same(none.json().data, [], 'a tenant with no usage in the period gets no notice')
  // The past period, as the tenant reads it.
  const past = await c.app.inject(as(tenant, { method: 'GET', url: `/v1/usage?period=${data[0]!.data.period}` }))
  const counters = new Map((past.json().counters as Array<{ name: string, used: number, limit: null }>)
    .map((x) => [x.name, x]))
  t.equal(counters.get('invoices_created')?.used, 7)
  t.equal(counters.get('invoices_created')?.limit, null, 'past periods show no limit')
  t.notOk(counters.has('customers'), 'nor live-object counts')
  t.equal((await c.app.inject(as(tenant, { method: 'GET', url: '/v1/usage?period=2026-13' }))).statusCode, 400)
})

t.test('limits and usage travel with an export and an import, and are erased with the tenant', async (t) => {
  const c = await buildTestApp(t)
  const tenant = await provisionTenant(c)
  const put = await c.app.inject({
    method: 'PUT', url: '/admin/v1/plans/gold', headers: operator(c), payload: { limits: { invoices_created: 50 } },
  })
  t.equal(put.statusCode, 200)
  await setLimits(c, tenant, { plan: 'gold', overrides: { customers: 9 } })
  const customerId = await customer(c, tenant)
  t.equal(await invoice(c, tenant, customerId), 201)
  await c.app.usageMeter.flush()
  const before = await query(c.db.adminUrl,
    'SELECT period, metric, amount FROM usage_periods WHERE tenant_id = $1 ORDER BY metric', [tenant.id])
  t.ok(before.length >= 2)

  const exported = await c.app.inject({
    method: 'GET', url: `/admin/v1/tenants/${tenant.id}/export`, headers: operator(c),
  })
  t.equal(exported.statusCode, 200)
  const lines = exported.body.trimEnd().split('\n').slice(0, -1)
  const tables = new Set(lines.map((l) => (JSON.parse(l) as { table: string }).table))
  for (const table of ['tenant_limits', 'usage_periods', 'usage_days', 'usage_route_days']) {
    t.ok(tables.has(table), `the export carries ${table}`)
  }

  const erased = await c.app.inject({ method: 'DELETE', url: `/admin/v1/tenants/${tenant.id}`, headers: operator(c) })
  t.equal(erased.statusCode, 200, erased.body)
  for (const table of ['tenant_limits', 'usage_periods', 'usage_days', 'usage_route_days', 'usage_notices']) {
    const left = await query(c.db.adminUrl, `SELECT 1 FROM ${table} WHERE tenant_id = $1`, [tenant.id])
    t.same(left, [], `${table} erased`)
  }

  const pool = new pg.Pool({ connectionString: c.db.ownerUrl, max: 1 })
  try {
    await importTenant(pool, () => Readable.from([exported.body]), async (client, tenantId) =>
      ({ shard: await allocateShard(client, tenantId, 'pooled'), placement: 'pooled' }),
    { signingKey: TEST_EXPORT_SIGNING_KEY })
  } finally {
    await pool.end()
  }
  t.same(await query(c.db.adminUrl,
    'SELECT period, metric, amount FROM usage_periods WHERE tenant_id = $1 ORDER BY metric', [tenant.id]), before,
  'the usage is back, not counted again by the import')
  const limits = await c.app.inject({
    method: 'GET', url: `/admin/v1/tenants/${tenant.id}/limits`, headers: operator(c),
  })
  t.match(limits.json(),
    { plan: 'gold', overrides: { customers: 9 }, effective: { invoices_created: 50, customers: 9 } })
})
