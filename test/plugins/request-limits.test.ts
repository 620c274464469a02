import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pg from 'pg'
import { sql } from 'kysely'
import { startTenantTransaction } from '../../src/db/tenant-transaction.ts'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

async function waitFor (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** A superuser connection holding a row lock on a customer, so that requests changing it block. */
async function lockCustomer (
  t: { teardown: (fn: () => unknown) => void },
  ctx: TestApp,
  customerId: string
): Promise<pg.Client> {
  const locker = new pg.Client({ connectionString: ctx.db.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM customers WHERE id = $1 FOR UPDATE', [customerId])
  return locker
}

async function lockWaiters (locker: pg.Client): Promise<number> {
  const { rows } = await locker.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity ' +
    "WHERE wait_event_type = 'Lock' AND datname = current_database()")
  return rows[0]!.n
}

/**
 * Sends a PATCH of the customer over a real socket, waits until it blocks on the locker's row lock,
 * then hangs up.
 */
async function abandonPatch (
  address: string,
  tenant: { key: string },
  customerId: string,
  name: string,
  locker: pg.Client
): Promise<void> {
  const body = JSON.stringify({ name })
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
  await waitFor('the PATCH to block on the row lock', async () => await lockWaiters(locker) === 1)
  req.destroy()
}

async function customerOf (ctx: TestApp, tenant: { key: string }, name = 'Original'): Promise<string> {
  const created = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  return created.json<{ id: string }>().id
}

t.test('the statement and idle timeouts are set for the transaction only, never for the connection', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 1 })
  const tenant = await provisionTenant(ctx)
  const trx = await startTenantTransaction(ctx.app.dbPool, tenant.id, {
    timeouts: { statementMs: 1234, idleInTransactionMs: 5678 },
  })
  await trx.ready
  const { rows } = await sql<{ s: string, i: string }>`SELECT current_setting('statement_timeout') AS s,
    current_setting('idle_in_transaction_session_timeout') AS i`.execute(trx.db)
  t.same(rows[0], { s: '1234ms', i: '5678ms' })
  await trx.commit()
  const client = await ctx.app.dbPool.connect()
  try {
    const after = await client.query<{ s: string, i: string }>("SELECT current_setting('statement_timeout') AS s, " +
      "current_setting('idle_in_transaction_session_timeout') AS i")
    t.same(after.rows[0], { s: '0', i: '0' }, 'the same pooled connection is back to the server defaults')
  } finally {
    client.release()
  }
})

t.test('a statement that runs past DB_STATEMENT_TIMEOUT_MS is cancelled: 503 with retry-after, ' +
  'nothing written', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 2, DB_STATEMENT_TIMEOUT_MS: 200 })
  const tenant = await provisionTenant(ctx)
  const customerId = await customerOf(ctx, tenant)
  const locker = await lockCustomer(t, ctx, customerId)
  const started = Date.now()
  const res = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/customers/${customerId}`,
    payload: { name: 'Too slow' },
  }))
  t.equal(res.statusCode, 503)
  t.ok(Number(res.headers['retry-after']) >= 1, 'says when to retry')
  t.match(res.headers['content-type'], /application\/problem\+json/)
  t.notMatch(res.json<{ detail: string }>().detail, /statement|cancel|timeout|customers|57014/i, 'no internals')
  t.ok(Date.now() - started < 2000, 'answered promptly')
  t.equal(await lockWaiters(locker), 0, 'no backend is left waiting')
  await locker.query('COMMIT')
  const [row] = await query<{ name: string }>(ctx.db.adminUrl, 'SELECT name FROM customers WHERE id = $1', [customerId])
  t.equal(row?.name, 'Original')
  await waitFor('the connections to be idle', () => ctx.app.dbPool.idleCount === ctx.app.dbPool.totalCount)
})

t.test('a request past REQUEST_DEADLINE_MS is cancelled on the server and answered 503', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 2, DB_STATEMENT_TIMEOUT_MS: 60_000, REQUEST_DEADLINE_MS: 300 })
  const tenant = await provisionTenant(ctx)
  const customerId = await customerOf(ctx, tenant)
  const locker = await lockCustomer(t, ctx, customerId)
  const started = Date.now()
  const res = await ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/customers/${customerId}`,
    payload: { name: 'Past the deadline' },
  }))
  const took = Date.now() - started
  t.equal(res.statusCode, 503)
  t.match(res.json(), { detail: /did not complete within 300 ms/ })
  t.equal(res.headers['retry-after'], '1')
  t.ok(took >= 250 && took < 3000, `answered at the deadline (${took} ms)`)
  await waitFor('the cancelled statement to leave the server', async () => await lockWaiters(locker) === 0, 2000)
  await locker.query('COMMIT')
  const [row] = await query<{ name: string }>(ctx.db.adminUrl, 'SELECT name FROM customers WHERE id = $1', [customerId])
  t.equal(row?.name, 'Original', 'nothing was written')
  // The connection that was sent a cancel is not reused: the pool opens a fresh one.
  await waitFor('the pool to settle', () => ctx.app.dbPool.idleCount === ctx.app.dbPool.totalCount)
  const after = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customerId}` }))
  t.equal(after.statusCode, 200, 'the next request is served normally')
})

t.test('a client that disconnects mid-query has its statement cancelled at once, ' +
  'not when the lock is released', async (t) => {
  const ctx = await buildTestApp(t, { DB_POOL_MAX: 2, DB_STATEMENT_TIMEOUT_MS: 60_000, REQUEST_DEADLINE_MS: 60_000 })
  const tenant = await provisionTenant(ctx)
  const customerId = await customerOf(ctx, tenant)
  const address = await ctx.app.listen({ host: '127.0.0.1', port: 0 })
  const locker = await lockCustomer(t, ctx, customerId)
  await abandonPatch(address, tenant, customerId, 'Changed by a vanished client', locker)
  await waitFor('its statement to be cancelled while the lock is still held',
    async () => await lockWaiters(locker) === 0, 2000)
  await waitFor('its connection to leave the pool busy list',
    () => ctx.app.dbPool.idleCount === ctx.app.dbPool.totalCount, 2000)
  await locker.query('COMMIT')
  const [row] = await query<{ name: string }>(ctx.db.adminUrl, 'SELECT name FROM customers WHERE id = $1', [customerId])
  t.equal(row?.name, 'Original', 'the abandoned change was rolled back')
})

t.test('past DB_POOL_QUEUE_MAX waiting requests, more are refused at once with 503 ' +
  'instead of queueing', async (t) => {
  const ctx = await buildTestApp(t, {
    DB_POOL_MAX: 1,
    DB_POOL_QUEUE_MAX: 1,
    DB_CONNECT_TIMEOUT_MS: 10_000,
    DB_STATEMENT_TIMEOUT_MS: 60_000,
  })
  const tenant = await provisionTenant(ctx)
  const customerId = await customerOf(ctx, tenant)
  const locker = await lockCustomer(t, ctx, customerId)
  const busy = ctx.app.inject(as(tenant, {
    method: 'PATCH',
    url: `/v1/customers/${customerId}`,
    payload: { name: 'holds the only connection' },
  }))
  await waitFor('the only connection to be busy', async () => await lockWaiters(locker) === 1)
  const queued = ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customerId}` }))
  await waitFor('one request to wait for a connection', () => ctx.app.dbPool.waitingCount === 1)
  const started = Date.now()
  const shed = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${customerId}` }))
  t.equal(shed.statusCode, 503)
  t.equal(shed.headers['retry-after'], '1')
  t.match(shed.json(), { detail: /capacity/ })
  t.ok(Date.now() - started < 500, 'refused at once')
  await locker.query('COMMIT')
  t.equal((await busy).statusCode, 200)
  t.equal((await queued).statusCode, 200, 'the one that queued within the bound is served')
})

t.test('a request that ended (answered or abandoned) never reports its deadline afterwards', async (t) => {
  const { PassThrough } = await import('node:stream')
  const lines: string[] = []
  const stream = new PassThrough()
  stream.on('data', (chunk: Buffer) => { lines.push(...chunk.toString().split('\n').filter((l) => l !== '')) })
  const ctx = await buildTestApp(t, { LOG_LEVEL: 'info', REQUEST_DEADLINE_MS: 400, DB_STATEMENT_TIMEOUT_MS: 60_000 },
    undefined, { logStream: stream })
  const tenant = await provisionTenant(ctx)
  const customerId = await customerOf(ctx, tenant)
  const address = await ctx.app.listen({ host: '127.0.0.1', port: 0 })
  const read = await fetch(`${address}/v1/customers/${customerId}`, {
    headers: { authorization: `Bearer ${tenant.key}` },
  })
  t.equal(read.status, 200)
  // Abandoned while it waits on a row lock, well before its deadline.
  const locker = await lockCustomer(t, ctx, customerId)
  await abandonPatch(address, tenant, customerId, 'abandoned', locker)
  await waitFor('its statement to be cancelled', async () => await lockWaiters(locker) === 0, 2000)
  await locker.query('COMMIT')
  await sleep(700)
  t.ok(lines.some((l) => l.includes('client disconnected')), 'the disconnect was logged')
  t.same(lines.filter((l) => l.includes('deadline_exceeded')), [], 'no deadline line for requests that were over')
})
