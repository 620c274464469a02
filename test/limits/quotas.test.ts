import pg from 'pg'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant, type TestApp } from '../helpers/app.ts'
import { operator } from '../helpers/operator.ts'

// Quotas are judged by the database at COMMIT (sql/0020): exact under concurrency, nothing counted for
// a write that fails or rolls back, a plan change seen by the very next write on any instance.

async function putPlan (c: TestApp, name: string, limits: Record<string, number | null>): Promise<void> {
  const res = await c.app.inject({
    method: 'PUT', url: `/admin/v1/plans/${name}`, headers: operator(c), payload: { limits },
  })
  if (res.statusCode >= 300) throw new Error(`plan ${name}: ${res.statusCode} ${res.body}`)
}

async function putOnPlan (c: TestApp, tenant: ProvisionedTenant, plan: string | null,
  overrides: Record<string, number | null> = {}): Promise<void> {
  const res = await c.app.inject({
    method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/limits`, headers: operator(c), payload: { plan, overrides },
  })
  if (res.statusCode !== 200) throw new Error(`limits: ${res.statusCode} ${res.body}`)
}

type Answer = { statusCode: number, body: Record<string, unknown> }

async function createCustomer (c: TestApp, tenant: ProvisionedTenant, name = 'Ada'): Promise<Answer> {
  const res = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  return { statusCode: res.statusCode, body: res.json() }
}

async function createInvoice (c: TestApp, tenant: ProvisionedTenant, customerId: string): Promise<Answer> {
  const res = await c.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customerId, currency: 'EUR', lines: [{ description: 'work', quantity: 1, unit_amount_cents: 100 }],
    },
  }))
  return { statusCode: res.statusCode, body: res.json() }
}

interface Counter { name: string, used: number, limit: number | null, resets_at: string | null }

async function usage (c: TestApp, tenant: ProvisionedTenant): Promise<Map<string, Counter>> {
  const res = await c.app.inject(as(tenant, { method: 'GET', url: '/v1/usage' }))
  if (res.statusCode !== 200) throw new Error(`usage: ${res.statusCode} ${res.body}`)
  return new Map((res.json().counters as Counter[]).map((counter) => [counter.name, counter]))
}

async function thresholdEvents (c: TestApp, tenant: ProvisionedTenant): Promise<Array<Record<string, unknown>>> {
  const res = await c.app.inject(as(tenant, {
    method: 'GET', url: '/v1/events?type=usage.threshold_reached&limit=100',
  }))
  if (res.statusCode !== 200) throw new Error(`events: ${res.statusCode} ${res.body}`)
  return (res.json().data as Array<{ data: Record<string, unknown> }>).map((e) => e.data)
}

t.test('at quota − 1, 20 concurrent creates admit exactly one; refusals and failures count nothing', async (t) => {
  const c = await buildTestApp(t)
  const tenant = await provisionTenant(c)
  const other = await provisionTenant(c)
  await putPlan(c, 'five-invoices', { invoices_created: 5 })
  await putOnPlan(c, tenant, 'five-invoices')
  await putOnPlan(c, other, 'five-invoices')
  const customer = await createCustomer(c, tenant)
  t.equal(customer.statusCode, 201)
  const customerId = customer.body.id as string
  for (let i = 0; i < 4; i++) t.equal((await createInvoice(c, tenant, customerId)).statusCode, 201)

  // A create that fails (a customer of no one) rolls back and uses nothing.
  const failed = await createInvoice(c, tenant, '00000000-0000-7000-8000-000000000000')
  t.equal(failed.statusCode, 422)
  t.equal((await usage(c, tenant)).get('invoices_created')?.used, 4)

  const results = await Promise.all(Array.from({ length: 20 }, async () =>
    createInvoice(c, tenant, customerId)))
  const admitted = results.filter((r) => r.statusCode === 201)
  const refused = results.filter((r) => r.statusCode === 403)
  t.equal(admitted.length, 1, 'exactly one create fits in the quota')
  t.equal(refused.length, 19, 'every other one is refused')
  const problem = refused[0]!.body
  t.equal(problem.type, 'https://rowfence.dev/problems/quota-exceeded')
  t.equal(problem.quota, 'invoices_created')
  t.equal(problem.limit, 5)
  t.equal(problem.used, 5)
  const nextMonth = new Date()
  nextMonth.setUTCDate(1)
  nextMonth.setUTCHours(0, 0, 0, 0)
  nextMonth.setUTCMonth(nextMonth.getUTCMonth() + 1)
  t.equal(problem.resets_at, nextMonth.toISOString())

  const listed = await c.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices?limit=100' }))
  t.equal(listed.json().data.length, 5, 'five invoices exist: the refused creates wrote nothing')
  const counters = await usage(c, tenant)
  t.same(counters.get('invoices_created'),
    { name: 'invoices_created', used: 5, limit: 5, resets_at: nextMonth.toISOString() })

  // The other tenant on the same plan has its own count.
  const otherCustomer = await createCustomer(c, other)
  t.equal((await createInvoice(c, other, otherCustomer.body.id as string)).statusCode, 201)
  t.equal((await usage(c, other)).get('invoices_created')?.used, 1)

  // 80 % (4 of 5) and 100 %: one notice each, however many creates raced past them.
  const notices = await thresholdEvents(c, tenant)
  t.same(notices.map((n) => n.threshold_percent).sort(), [100, 80])
  t.ok(notices.every((n) => n.quota === 'invoices_created' && n.limit === 5))
  t.same(await thresholdEvents(c, other), [], 'the other tenant got no notice')
})

t.test('quotas of live objects count what exists, concurrently and after deletes', async (t) => {
  const c = await buildTestApp(t)
  const tenant = await provisionTenant(c)
  await putOnPlan(c, tenant, null, { customers: 3 })
  t.equal((await createCustomer(c, tenant)).statusCode, 201)
  const results = await Promise.all(Array.from({ length: 6 }, async (_, i) =>
    createCustomer(c, tenant, `c${i}`)))
  t.equal(results.filter((r) => r.statusCode === 201).length, 2, 'two more fit')
  t.equal(results.filter((r) => r.statusCode === 403).length, 4)
  const counters = await usage(c, tenant)
  t.same(counters.get('customers'), { name: 'customers', used: 3, limit: 3, resets_at: null })
  // Deleting one makes room for one.
  const admitted = results.find((r) => r.statusCode === 201)!
  const deleted = await c.app.inject(as(tenant, {
    method: 'DELETE', url: `/v1/customers/${admitted.body.id as string}`,
  }))
  t.equal(deleted.statusCode, 204)
  t.equal((await createCustomer(c, tenant)).statusCode, 201)
  t.equal((await createCustomer(c, tenant)).statusCode, 403)
  // Crossing 80 % and 100 % again after the delete sends no second notice in the same period.
  const notices = (await thresholdEvents(c, tenant)).filter((n) => n.quota === 'customers')
  t.equal(notices.length, 2)
})

t.test('a plan change applies to the next write on another instance', async (t) => {
  const a = await buildTestApp(t)
  const b = await buildTestApp(t, {}, a.db)
  const tenant = await provisionTenant(a)
  await putPlan(a, 'tiny', { invoices_created: 1 })
  await putOnPlan(a, tenant, 'tiny')
  const customer = await createCustomer(b, tenant)
  const customerId = customer.body.id as string
  t.equal((await createInvoice(b, tenant, customerId)).statusCode, 201)
  t.equal((await createInvoice(b, tenant, customerId)).statusCode, 403)
  await putPlan(a, 'tiny', { invoices_created: 2 })
  t.equal((await createInvoice(b, tenant, customerId)).statusCode, 201, 'the raised plan holds at once on b')
  await putOnPlan(a, tenant, 'tiny', { invoices_created: null })
  for (let i = 0; i < 3; i++) {
    t.equal((await createInvoice(b, tenant, customerId)).statusCode, 201, 'unlimited override')
  }
  t.equal((await usage(b, tenant)).get('invoices_created')?.limit, null)
})

t.test('configured defaults apply where plans are silent; operators manage plans', async (t) => {
  const c = await buildTestApp(t, { LIMIT_WEBHOOK_ENDPOINTS: 0 })
  const tenant = await provisionTenant(c)
  const refused = await c.app.inject(as(tenant, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: 'https://example.com/hook', event_types: ['*'] },
  }))
  t.equal(refused.statusCode, 403, refused.body)
  t.equal(refused.json().quota, 'webhook_endpoints')
  t.equal(refused.json().resets_at, null)

  await putPlan(c, 'hooks', { webhook_endpoints: 1 })
  await putOnPlan(c, tenant, 'hooks')
  const limits = await c.app.inject({
    method: 'GET', url: `/admin/v1/tenants/${tenant.id}/limits`, headers: operator(c),
  })
  t.equal(limits.json().plan, 'hooks')
  t.equal(limits.json().effective.webhook_endpoints, 1)
  t.equal(limits.json().effective.requests_per_second, null, 'the test app\'s default: unlimited')

  const inUse = await c.app.inject({ method: 'DELETE', url: '/admin/v1/plans/hooks', headers: operator(c) })
  t.equal(inUse.statusCode, 409)
  const list = await c.app.inject({ method: 'GET', url: '/admin/v1/plans', headers: operator(c) })
  t.same(list.json().data.map((p: { name: string, tenants: number }) => [p.name, p.tenants]), [['hooks', 1]])
  const unknown = await c.app.inject({
    method: 'PUT', url: `/admin/v1/tenants/${tenant.id}/limits`, headers: operator(c), payload: { plan: 'nope' },
  })
  t.equal(unknown.statusCode, 422)
  const badLimit = await c.app.inject({
    method: 'PUT', url: '/admin/v1/plans/bad', headers: operator(c), payload: { limits: { invoices: 3 } },
  })
  t.equal(badLimit.statusCode, 400, 'an unknown limit name is refused')
  await putOnPlan(c, tenant, null)
  const deleted = await c.app.inject({ method: 'DELETE', url: '/admin/v1/plans/hooks', headers: operator(c) })
  t.equal(deleted.statusCode, 204)
})

t.test('as the runtime role, no trick of its own gets a write past a quota', async (t) => {
  const c = await buildTestApp(t)
  const tenant = await provisionTenant(c)
  await putOnPlan(c, tenant, null, { customers: 2, api_keys: 2 })
  /** One transaction as `app`, bound as a request binds, with `also` run before COMMIT. */
  const attempt = async (insert: string, also: string[] = [], defaults = '{}'): Promise<string | undefined> => {
    const client = new pg.Client({ connectionString: c.db.appUrl })
    await client.connect()
    try {
      await client.query('BEGIN')
      await client.query('SELECT set_config($1, $2, true), set_config($3, $4, true)',
        ['app.current_tenant_id', tenant.id, 'app.default_limits', defaults])
      await client.query(insert)
      for (const statement of also) await client.query(statement)
      await client.query('COMMIT')
      return undefined
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {})
      return (error as { code?: string }).code
    } finally {
      await client.end()
    }
  }
  const three = "INSERT INTO customers (id, name) SELECT gen_random_uuid(), 'c' || n FROM generate_series(1, 3) n"
  t.equal(await attempt(three), 'RQ001', 'three customers at once: over the quota of two')
  const backdated = "INSERT INTO customers (id, name, created_at) SELECT gen_random_uuid(), 'c' || n, " +
    "now() - interval '1 hour' FROM generate_series(1, 3) n"
  t.equal(await attempt(backdated), 'RQ001', 'nor with an earlier created_at')
  t.equal(await attempt(three, ["SELECT set_config('app.current_tenant_id', '', true)"]), '42501',
    'nor by unbinding before COMMIT: refused')
  t.equal(await attempt(three, [], ''), '42501', 'nor without the default quotas: refused')
  const names = await c.app.inject(as(tenant, { method: 'GET', url: '/v1/customers' }))
  t.same(names.json().data, [], 'none of them was written')

  // A revoked key made live again counts like a new one.
  const newKey = async (name: string): Promise<{ statusCode: number, id: string }> => {
    const payload = { name, scopes: ['read'] }
    const res = await c.app.inject(as(tenant, { method: 'POST', url: '/v1/api-keys', payload }))
    return { statusCode: res.statusCode, id: res.json().id as string }
  }
  const second = await newKey('second')
  t.equal(second.statusCode, 201, 'the second key: the quota is full')
  const revoked = await c.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${second.id}` }))
  t.equal(revoked.statusCode, 204)
  t.equal((await newKey('third')).statusCode, 201)
  t.equal(await attempt(`UPDATE api_keys SET revoked_at = NULL WHERE id = '${second.id}'`), 'RQ001',
    'reviving the revoked key would make three live keys')

  // The operator is not held to a tenant's quotas: a replacement key for a leaked one.
  const issued = await c.app.inject({
    method: 'POST',
    url: `/admin/v1/tenants/${tenant.id}/api-keys`,
    headers: operator(c),
    payload: { name: 'replacement' },
  })
  t.equal(issued.statusCode, 201, issued.body)
})
