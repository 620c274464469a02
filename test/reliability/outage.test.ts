// A PostgreSQL server of this file's own (embedded, in a temporary directory), stopped and started
// again under the running app: the shared test server cannot be stopped without taking every other
// test file down with it.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { startEmbedded, type EmbeddedDatabase } from '../../src/ops/embedded.ts'
import { migrate } from '../../src/ops/migrate.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { freePort } from '../helpers/net.ts'

const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-outage-'))
const port = await freePort()
let server: EmbeddedDatabase | undefined = await startEmbedded({ dataDir: dir, port, database: 'rowfence' })
t.teardown(async () => {
  await server?.stop()
  await rm(dir, { recursive: true, force: true })
})
await migrate(server.ownerUrl)
const database = {
  name: 'rowfence',
  adminUrl: server.adminUrl.replace(/\/postgres$/, '/rowfence'),
  ownerUrl: server.ownerUrl,
  appUrl: server.appUrl,
}
const ctx = await buildTestApp(t, { DB_CONNECT_TIMEOUT_MS: 1000, DB_POOL_MAX: 4, REQUEST_DEADLINE_MS: 5000 }, database)
const tenant = await provisionTenant(ctx)
const customer = (await ctx.app.inject(as(tenant, {
  method: 'POST',
  url: '/v1/customers',
  payload: { name: 'Survivor' },
}))).json<{ id: string }>()

t.test('a transaction cut off mid-request leaves nothing half-written, and the client is told it failed', async (t) => {
  const locker = new pg.Client({ connectionString: database.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  // The audit insert (the last statement of a create) waits on the tenant's audit head: the
  // invoice and its lines are written by then, inside the request's transaction.
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM audit_heads WHERE tenant_id = $1 FOR UPDATE', [tenant.id])
  const pending = ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customer.id,
      currency: 'EUR',
      lines: [{ description: 'cut off', quantity: 1, unit_amount_cents: 100 }],
    },
  }))
  let victim: number | undefined
  for (let i = 0; i < 250 && victim === undefined; i++) {
    const { rows } = await locker.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    victim = rows[0]?.pid
    if (victim === undefined) await sleep(20)
  }
  t.ok(victim, 'the create is blocked after its first writes')
  const written = await locker.query<{ n: number }>('SELECT count(*)::int AS n FROM invoices WHERE tenant_id = $1',
    [tenant.id])
  t.equal(written.rows[0]!.n, 0, 'its uncommitted invoice is invisible to others')
  await locker.query('SELECT pg_terminate_backend($1)', [victim])
  const res = await pending
  t.equal(res.statusCode, 503, 'the client is told it failed')
  t.ok(Number(res.headers['retry-after']) >= 1)
  t.match(res.headers['content-type'], /problem\+json/)
  await locker.query('COMMIT')
  const after = await locker.query<{ n: number }>(
    'SELECT (SELECT count(*) FROM invoices WHERE tenant_id = $1)::int + ' +
      '(SELECT count(*) FROM invoice_lines WHERE tenant_id = $1)::int AS n',
    [tenant.id])
  t.equal(after.rows[0]!.n, 0, 'no invoice and no line survived')
  const again = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
  t.equal(again.statusCode, 200, 'the pool replaced the dead connection')
})

t.test('with the database down, requests fail fast with 503 and retry-after; it recovers by itself', async (t) => {
  t.equal((await ctx.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
  await server!.stop()
  server = undefined

  for (const request of [
    as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }),
    as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'during the outage' } }),
    { method: 'GET' as const, url: '/admin/v1/tenants', headers: { authorization: `Bearer ${ctx.adminToken}` } },
  ]) {
    const started = Date.now()
    const res = await ctx.app.inject(request)
    const took = Date.now() - started
    t.equal(res.statusCode, 503, `${request.method} ${request.url}: 503`)
    t.ok(Number(res.headers['retry-after']) >= 1, 'with retry-after')
    t.match(res.headers['content-type'], /problem\+json/)
    t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1|stack/i, 'no internals')
    t.ok(took < 2000, `answered within 2 s (${took} ms)`)
  }
  const ready = await ctx.app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503, '/readyz says not ready')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200, '/healthz: the process is up')

  server = await startEmbedded({ dataDir: dir, port, database: 'rowfence' })
  const back = Date.now()
  let served = false
  while (!served && Date.now() - back < 5000) {
    const res = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customer.id}` }))
    served = res.statusCode === 200
    if (!served) await sleep(100)
  }
  t.ok(served, `serving again ${Date.now() - back} ms after the database returned, with no restart`)
  t.equal((await ctx.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200, 'ready again')
  const write = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'after the outage' },
  }))
  t.equal(write.statusCode, 201)
  const names = await query<{ name: string }>(database.adminUrl,
    'SELECT name FROM customers WHERE tenant_id = $1 ORDER BY name', [tenant.id])
  t.same(names.map((r) => r.name), ['Survivor', 'after the outage'], 'nothing from the outage was half-applied')
})
