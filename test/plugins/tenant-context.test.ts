import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pg from 'pg'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

async function waitFor (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

t.test('a pooled connection reused after a request carries no tenant', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 1 })
  const tenant = await provisionTenant(ctx)
  const created = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Kept' } }))
  t.equal(created.statusCode, 201)
  t.equal(ctx.app.dbPool.totalCount, 1, 'the single pooled connection served the request')
  // Take that same connection and look at what it remembers.
  const client = await ctx.app.dbPool.connect()
  try {
    const { rows: [state] } = await client.query(`SELECT current_setting('app.current_tenant_id', true) AS setting,
      current_tenant_id() AS tenant, (SELECT count(*)::int FROM customers) AS customers`)
    t.same(state, { setting: '', tenant: null, customers: 0 }, 'no tenant, no rows, and no error')
  } finally {
    client.release()
  }
})

t.test('routes that need no tenant never check out a connection', async (t) => {
  const ctx = await buildTestApp(t)
  await ctx.app.ready()
  const opened = ctx.app.dbPool.totalCount // the catalog read at start-up
  for (const url of ['/healthz', '/openapi.json', '/nope']) {
    await ctx.app.inject({ method: 'GET', url })
  }
  t.equal(ctx.app.dbPool.totalCount, opened, 'no connection was opened')
  t.equal(ctx.app.dbPool.idleCount, opened, 'none is checked out')
})

t.test('every request releases its connection, whatever its outcome', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 2 })
  const tenant = await provisionTenant(ctx)
  const outcomes = await Promise.all([
    ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'ok' } })),
    ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/customers/0190a6d2-0000-7000-8000-000000000000' })),
    ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/customers?cursor=garbage' })),
    ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'dup', external_ref: 'r' } })),
    ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'dup', external_ref: 'r' } })),
    ctx.app.inject({
      method: 'GET',
      url: '/v1/customers',
      headers: { authorization: `Bearer ${tenant.key.slice(0, -1)}${tenant.key.endsWith('A') ? 'B' : 'A'}` },
    }),
  ])
  t.same(outcomes.map((r) => r.statusCode).sort(), [201, 201, 400, 401, 404, 409])
  t.equal(ctx.app.dbPool.totalCount, ctx.app.dbPool.idleCount, 'no connection is left checked out')
  t.equal(ctx.app.dbPool.waitingCount, 0)
})

t.test('a COMMIT that fails becomes an error response, never a false 2xx', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  // A deferred constraint trigger fires at COMMIT, after the handler has finished successfully.
  await query(ctx.db.ownerUrl, `
    CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.name = 'refuse at commit' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON customers
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()`)
  const res = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'refuse at commit' },
  }))
  t.equal(res.statusCode, 500)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.notMatch(res.body, /refused|trigger|refuse_at_commit|P0001/, 'nothing internal in the response')
  const rows = await query(ctx.db.adminUrl, "SELECT 1 FROM customers WHERE name = 'refuse at commit'")
  t.same(rows, [], 'nothing was written')
  const next = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'fine' } }))
  t.equal(next.statusCode, 201, 'the connection is healthy for the next request')
  t.equal(ctx.app.dbPool.totalCount, ctx.app.dbPool.idleCount)
})

t.test('an error in the middle of a request leaves no partial write', async (t) => {
  const ctx = await buildTestApp(t)
  // Provisioning writes the tenant, then its key; make the second write fail.
  await query(ctx.db.ownerUrl, `
    CREATE FUNCTION refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no keys today'; END $$;
    CREATE TRIGGER refuse_key BEFORE INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION refuse_key()`)
  const res = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    payload: { name: 'Half', slug: 'half' },
  })
  t.equal(res.statusCode, 500)
  t.notMatch(res.body, /no keys today|api_keys/)
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM tenants WHERE slug = 'half'"), [],
    'the tenant row was rolled back with the key')
})

t.test('a tenant request whose handler writes and then fails leaves no partial write', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  // POST /v1/customers inserts the customer, then its audit event: make the second write fail.
  await query(ctx.db.ownerUrl, `
    CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.action = 'customer.created' THEN RAISE EXCEPTION 'no audit today'; END IF; RETURN NEW; END $$;
    CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit()`)
  const statements: string[] = []
  const observed = await buildTestApp(t, {}, ctx.db, { onQuery: (text) => { statements.push(text) } })
  const res = await observed.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'Half written' },
  }))
  t.equal(res.statusCode, 500)
  t.notMatch(res.body, /no audit today|audit_events|refuse_audit/, 'nothing internal in the response')
  t.ok(statements.some((s) => /insert into "customers"/i.test(s)), 'the customer insert was sent before the failure')
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM customers WHERE name = 'Half written'"), [],
    'and rolled back with the failed audit event')
  t.equal(observed.app.dbPool.totalCount, observed.app.dbPool.idleCount, 'the connection went back to the pool')
})

t.test('a client that disconnects mid-request gets its work rolled back and its connection released', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 2 })
  const tenant = await provisionTenant(ctx)
  const created = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'Original' },
  }))
  const customerId = created.json<{ id: string }>().id
  const address = await ctx.app.listen({ host: '127.0.0.1', port: 0 })

  // Hold the row lock so the PATCH blocks inside its transaction.
  const locker = new pg.Client({ connectionString: ctx.db.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM customers WHERE id = $1 FOR UPDATE', [customerId])

  const body = JSON.stringify({ name: 'Changed by a vanished client' })
  const req = httpRequest(`${address}/v1/customers/${customerId}`, {
    method: 'PATCH',
    headers: {
      authorization: `Bearer ${tenant.key}`,
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    },
  })
  req.on('error', () => {})
  req.end(body)
  await waitFor('the PATCH to block on the row lock', async () => {
    const waiting = await locker.query('SELECT count(*)::int AS n FROM pg_stat_activity ' +
      "WHERE wait_event_type = 'Lock' AND datname = current_database()")
    return waiting.rows[0].n === 1
  })
  req.destroy()
  await sleep(100)
  await locker.query('COMMIT') // the PATCH now runs to completion, for nobody

  await waitFor('the connection to return to the pool', () => ctx.app.dbPool.idleCount === ctx.app.dbPool.totalCount)
  const [row] = await query<{ name: string }>(ctx.db.adminUrl, 'SELECT name FROM customers WHERE id = $1', [customerId])
  t.equal(row?.name, 'Original', 'the abandoned change was rolled back')
})

// Every test above that fails a request does so through a database error, which PostgreSQL rolls
// back whatever the pipeline does. These fail with an application error (a 4xx problem) after the
// request has written, so only the pipeline's ROLLBACK keeps the write out.

t.test('a keyed finalize of an unknown invoice (404) keeps no key: its retry is a 404 again, not a 409', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const finalize = () => ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices/0190a6d2-0000-7000-8000-000000000000/finalize',
    headers: { 'idempotency-key': 'finalize-unknown' },
  }))
  const keyRows = () => query(ctx.db.adminUrl,
    "SELECT status FROM idempotency_keys WHERE tenant_id = $1 AND key = 'finalize-unknown'", [tenant.id])
  const first = await finalize()
  t.equal(first.statusCode, 404)
  t.same(await keyRows(), [], 'the key row inserted before the 404 was not committed')
  const retry = await finalize()
  t.equal(retry.statusCode, 404, 'the retry is answered as the first request was')
  t.match(retry.json(), { type: /not-found$/ })
  t.same(await keyRows(), [])
})

t.test('a refused transition (409) undoes its earlier writes: its own key, the expired keys it swept', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const post = (url: string, payload?: object, key?: string) => ctx.app.inject(as(tenant, {
    method: 'POST',
    url,
    ...(payload !== undefined && { payload }),
    ...(key !== undefined && { headers: { 'idempotency-key': key } }),
  }))
  const customerId = (await post('/v1/customers', { name: 'Buyer' })).json<{ id: string }>().id
  const lines = [{ description: 'x', quantity: 1, unit_amount_cents: 100 }]
  const invoice = (await post('/v1/invoices', { customer_id: customerId, currency: 'EUR', lines }))
    .json<{ id: string }>()
  // Keys of earlier requests, expired: the next keyed request deletes them in passing.
  for (const key of ['old-1', 'old-2']) t.equal((await post('/v1/customers', { name: key }, key)).statusCode, 201)
  await query(ctx.db.adminUrl,
    "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key LIKE 'old-%'")
  const keys = async () => (await query<{ key: string }>(ctx.db.adminUrl,
    'SELECT key FROM idempotency_keys WHERE tenant_id = $1 ORDER BY key', [tenant.id])).map((r) => r.key)

  const pay = () => post(`/v1/invoices/${invoice.id}/pay`, undefined, 'pay-early')
  const refused = await pay()
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { type: /invalid-transition$/ }, 'a draft cannot be paid')
  t.same(await keys(), ['old-1', 'old-2'], 'the swept keys are back and the new key is not there')

  t.equal((await post(`/v1/invoices/${invoice.id}/finalize`)).statusCode, 200)
  const retried = await pay()
  t.equal(retried.statusCode, 200, 'the same key works once the invoice can be paid')
  t.equal(retried.headers['idempotent-replayed'], undefined)
  t.same(await keys(), ['pay-early'], 'a request that succeeds does sweep the expired keys')
})
