import { randomBytes } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pg from 'pg'
import type { AppConfig } from '../../src/app.ts'
import { formatApiKey } from '../../src/auth/api-keys.ts'
import { FairShare, TenantQueueFull } from '../../src/limits/fair-share.ts'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'

async function waitFor (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

// The gate on its own: no database.

t.test('the gate grants a tenant its share, then queues its requests in arrival order', async (t) => {
  const gate = new FairShare(3)
  const held = [gate.take('a', 2)!, gate.take('a', 2)!]
  t.same(held.map((s) => s.state), ['held', 'held'])
  const order: number[] = []
  const waiting = [1, 2, 3].map((n) => {
    const slot = gate.take('a', 2)!
    slot.granted.then(() => { order.push(n) }, () => {})
    return slot
  })
  t.same(gate.usage('a'), { held: 2, waiting: 3 })
  t.equal(gate.waiting, 3)
  t.throws(() => gate.take('a', 2), TenantQueueFull, 'a full queue refuses at once')
  const other = gate.take('b', 2)
  t.equal(other?.state, 'held', 'another tenant is not held up by a full one')
  other!.release()

  held[1]!.release()
  await waiting[0]!.granted
  held[0]!.release()
  await waiting[1]!.granted
  waiting[0]!.release()
  waiting[1]!.release()
  await waiting[2]!.granted
  waiting[2]!.release()
  t.same(order, [1, 2, 3], 'first come, first served')
  t.same(gate.usage('a'), { held: 0, waiting: 0 })
  t.equal(gate.tenants, 0, 'a tenant that holds nothing and has no waiters is forgotten')
})

t.test('releasing twice, or after an error, gives one slot back once', async (t) => {
  const gate = new FairShare(10)
  const attempt = async (): Promise<void> => {
    const slot = gate.take('a', 1)!
    try {
      await slot.granted
      throw new Error('the work failed')
    } finally {
      slot.release()
      slot.release()
    }
  }
  await t.rejects(Promise.all([attempt(), attempt(), attempt()]), /the work failed/)
  await sleep(0)
  t.same(gate.usage('a'), { held: 0, waiting: 0 })
  const first = gate.take('a', 2)!
  const second = gate.take('a', 2)!
  first.release()
  first.release() // must not free the second's place
  t.same(gate.usage('a'), { held: 1, waiting: 0 })
  second.release()
  t.equal(gate.tenants, 0)
})

t.test('a waiter cancelled (client gone, deadline) leaves the queue at once; the next one moves up', async (t) => {
  const gate = new FairShare(10)
  const holder = gate.take('a', 1)!
  const gone = gate.take('a', 1)!
  const next = gate.take('a', 1)!
  const reason = new Error('client gone')
  gone.cancel(reason)
  await t.rejects(gone.granted, reason)
  t.same(gate.usage('a'), { held: 1, waiting: 1 })
  holder.cancel(new Error('ignored')) // a held slot is not cancelled: its transaction's end releases it
  t.equal(holder.state, 'held')
  holder.release()
  await next.granted
  t.equal(gone.state, 'done')
  gone.release()
  next.release()
  t.same([gate.waiting, gate.tenants], [0, 0])
})

t.test('no share (null) holds nothing; a queue bound of 0 never queues; a grown share admits waiters', async (t) => {
  const gate = new FairShare(0)
  t.equal(gate.take('a', null), null)
  t.equal(gate.tenants, 0)
  const only = gate.take('a', 1)!
  t.throws(() => gate.take('a', 1), TenantQueueFull)
  only.release()

  const grow = new FairShare(5)
  const first = grow.take('a', 1)!
  const queued = grow.take('a', 1)!
  const now = grow.take('a', 3)! // the tenant's limit was raised meanwhile
  await queued.granted
  t.same([queued.state, now.state], ['held', 'held'], 'the one already waiting goes first')
  for (const slot of [first, queued, now]) slot.release()
  t.equal(grow.tenants, 0)
})

// Through the tenant pipeline, against PostgreSQL.

/** A superuser connection holding a row lock on a customer: requests changing it block in the database. */
async function lockCustomer (
  t: { teardown: (fn: () => unknown) => void }, ctx: TestApp, id: string
): Promise<pg.Client> {
  const locker = new pg.Client({ connectionString: ctx.db.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM customers WHERE id = $1 FOR UPDATE', [id])
  return locker
}

/** Backends waiting on a lock. The locker's transaction would keep its first view of pg_stat_activity: cleared. */
async function lockWaiters (locker: pg.Client): Promise<number> {
  await locker.query('SELECT pg_stat_clear_snapshot()')
  const { rows } = await locker.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity ' +
    "WHERE wait_event_type = 'Lock' AND datname = current_database()")
  return rows[0]!.n
}

async function customerOf (ctx: TestApp, tenant: { key: string }): Promise<string> {
  const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Original' } }))
  return res.json<{ id: string }>().id
}

const patch = (ctx: TestApp, tenant: { key: string }, id: string, name: string) =>
  ctx.app.inject(as(tenant, { method: 'PATCH', url: `/v1/customers/${id}`, payload: { name } }))

const SLOW: Partial<AppConfig> = { DB_STATEMENT_TIMEOUT_MS: 60_000, REQUEST_DEADLINE_MS: 60_000 }

t.test('a tenant with slow requests past its share waits in its own queue: another tenant is served ' +
  'meanwhile, and its requests past the queue get 429', async (t) => {
  // DB_POOL_MAX 4 and no LIMIT_CONCURRENT_REQUESTS: the default share, half the pool (2).
  const ctx = await buildTestApp(t, {
    ...SLOW, DB_POOL_MAX: 4, LIMIT_CONCURRENT_REQUESTS: undefined, TENANT_QUEUE_MAX: 2,
  })
  const [a, b] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  const [customerA, customerB] = [await customerOf(ctx, a), await customerOf(ctx, b)]
  const locker = await lockCustomer(t, ctx, customerA)
  const slow = [1, 2, 3, 4].map((n) => patch(ctx, a, customerA, `A ${n}`))
  await waitFor('A to hold its share and queue the rest', () =>
    ctx.app.fairShare.usage(a.id).held === 2 && ctx.app.fairShare.usage(a.id).waiting === 2)
  await waitFor('A\'s two transactions to block on the row lock', async () => await lockWaiters(locker) === 2)
  t.equal(ctx.app.dbPool.waitingCount, 0, 'none of A\'s requests waits in the pool\'s queue')

  for (const refused of await Promise.all([patch(ctx, a, customerA, 'A 5'), patch(ctx, a, customerA, 'A 6')])) {
    t.equal(refused.statusCode, 429)
    t.equal(refused.headers['retry-after'], '1')
    t.match(refused.headers['content-type'], /application\/problem\+json/)
    t.match(refused.json(), { type: /\/problems\/tenant-concurrency-exceeded$/, status: 429 })
  }
  const started = Date.now()
  const read = await ctx.app.inject(as(b, { method: 'GET', url: `/v1/customers/${customerB}` }))
  t.equal(read.statusCode, 200, 'B reads while A\'s requests are stuck')
  t.equal((await patch(ctx, b, customerB, 'B')).statusCode, 200, 'and writes')
  t.ok(Date.now() - started < 2000, 'promptly')

  const metrics = await ctx.app.inject({
    method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ctx.adminToken}` },
  })
  t.match(metrics.body, /^rowfence_tenant_queue_waiting 2$/m, 'the gauge counts the waiting requests')
  t.match(metrics.body, /^rowfence_limit_refusals_total\{reason="concurrency"\} 2$/m)
  t.notMatch(metrics.body, new RegExp(a.id), 'no tenant label')

  await locker.query('COMMIT')
  t.same((await Promise.all(slow)).map((r) => r.statusCode), [200, 200, 200, 200], 'then A\'s queued requests run')
  t.same(ctx.app.fairShare.usage(a.id), { held: 0, waiting: 0 })
  t.same([ctx.app.fairShare.waiting, ctx.app.fairShare.tenants], [0, 0], 'every slot is back')
})

t.test('without a share (unlimited), the same slow tenant takes the whole pool and the other one waits', async (t) => {
  const ctx = await buildTestApp(t, { ...SLOW, DB_POOL_MAX: 4, LIMIT_CONCURRENT_REQUESTS: 'unlimited' })
  const [a, b] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  const [customerA, customerB] = [await customerOf(ctx, a), await customerOf(ctx, b)]
  const locker = await lockCustomer(t, ctx, customerA)
  const slow = [1, 2, 3, 4].map((n) => patch(ctx, a, customerA, `A ${n}`))
  await waitFor('A to take every connection', async () => await lockWaiters(locker) === 4)
  let answered = false
  const read = ctx.app.inject(as(b, { method: 'GET', url: `/v1/customers/${customerB}` }))
    .finally(() => { answered = true })
  await sleep(300)
  t.notOk(answered, 'B is stuck in the pool\'s queue behind A (what the share prevents)')
  await locker.query('COMMIT')
  t.equal((await read).statusCode, 200)
  await Promise.all(slow)
})

t.test('slots come back after errors, a failed start, client aborts and deadlines', async (t) => {
  const ctx = await buildTestApp(t, {
    ...SLOW, DB_POOL_MAX: 2, DB_POOL_QUEUE_MAX: 0, LIMIT_CONCURRENT_REQUESTS: 1, REQUEST_DEADLINE_MS: 1000,
  })
  const [a, b] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  const [customerA, customerB] = [await customerOf(ctx, a), await customerOf(ctx, b)]
  const gate = ctx.app.fairShare
  const idle = (): boolean => gate.tenants === 0 && gate.waiting === 0
  const nobody = '00000000-0000-7000-8000-000000000000'

  const missing = await ctx.app.inject(as(a, { method: 'GET', url: `/v1/customers/${nobody}` }))
  t.equal(missing.statusCode, 404)
  const line = { description: 'x', quantity: 1, unit_amount_cents: 1 }
  const refused = await ctx.app.inject(as(a, {
    method: 'POST', url: '/v1/invoices', payload: { customer_id: nobody, currency: 'EUR', lines: [line] },
  }))
  t.equal(refused.statusCode, 422, 'an error raised inside the transaction')
  t.ok(idle(), 'after errors in the handler')

  // The pool full and its queue bound 0: B's transaction cannot start.
  const taken = [await ctx.app.dbPool.connect(), await ctx.app.dbPool.connect()]
  const shed = await ctx.app.inject(as(b, { method: 'GET', url: `/v1/customers/${customerB}` }))
  for (const client of taken) client.release()
  t.equal(shed.statusCode, 503, 'B\'s start failed (pool saturated)')
  t.ok(idle(), 'after a failed start')

  // A's only slot held by the test: A's requests wait for it.
  const address = await ctx.app.listen({ host: '127.0.0.1', port: 0 })
  const held = gate.take(a.id, 1)!
  const req = httpRequest(`${address}/v1/customers/${customerA}`, { headers: { authorization: `Bearer ${a.key}` } })
  req.on('error', () => {})
  req.end()
  await waitFor('the request to queue', () => gate.usage(a.id).waiting === 1)
  req.destroy()
  await waitFor('the abandoned waiter to leave the queue', () => gate.usage(a.id).waiting === 0, 2000)
  const started = Date.now()
  const late = await ctx.app.inject(as(a, { method: 'GET', url: `/v1/customers/${customerA}` }))
  t.equal(late.statusCode, 503, 'a waiter past its deadline is answered as any request past it')
  t.match(late.json(), { detail: /did not complete within 1000 ms/ })
  t.ok(Date.now() - started < 2500, 'at its deadline')
  t.same(gate.usage(a.id), { held: 1, waiting: 0 }, 'the waiters left; only the test\'s slot is held')
  held.release()
  t.ok(idle())

  // A request holding A's slot, blocked in the database, past its deadline.
  const locker = await lockCustomer(t, ctx, customerA)
  const blocked = await patch(ctx, a, customerA, 'past the deadline')
  t.equal(blocked.statusCode, 503)
  await waitFor('its slot to be back after its deadline', idle, 2000)

  // A request holding A's slot, blocked in the database, whose client hangs up.
  const abandoned = httpRequest(`${address}/v1/customers/${customerA}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
  })
  abandoned.on('error', () => {})
  abandoned.end(JSON.stringify({ name: 'abandoned' }))
  await waitFor('the PATCH to block on the lock', async () => await lockWaiters(locker) === 1)
  t.same(gate.usage(a.id), { held: 1, waiting: 0 })
  abandoned.destroy()
  await waitFor('its slot to be back after its client left', idle, 2000)
  await locker.query('ROLLBACK')
  t.equal((await patch(ctx, a, customerA, 'after all that')).statusCode, 200, 'A is served again')
  t.ok(idle())
})

t.test('a key checked before its body is read holds a slot for that check too, without deadlocking ' +
  'a share of 1', async (t) => {
  // No credential cache: every POST's key is checked in preParsing, then again in preHandler.
  const ctx = await buildTestApp(t, { LIMIT_CONCURRENT_REQUESTS: 1, CREDENTIAL_CACHE_TTL_MS: 0, TENANT_QUEUE_MAX: 10 })
  const tenant = await provisionTenant(ctx)
  const created = await Promise.all([1, 2, 3, 4, 5].map((n) => ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/customers', payload: { name: `C ${n}` },
  }))))
  t.same(created.map((r) => r.statusCode), [201, 201, 201, 201, 201])
  t.same([ctx.app.fairShare.waiting, ctx.app.fairShare.tenants], [0, 0])

  // A made-up key naming the tenant: its check before the body waits for the tenant's slot like any request.
  const forged = formatApiKey('00000000-0000-7000-9000-000000000000', tenant.id, randomBytes(32))
  const held = ctx.app.fairShare.take(tenant.id, 1)!
  const refused = ctx.app.inject(as(forged, { method: 'POST', url: '/v1/customers', payload: { name: 'x' } }))
  await waitFor('the check to wait for the tenant\'s slot', () => ctx.app.fairShare.usage(tenant.id).waiting === 1)
  held.release()
  t.equal((await refused).statusCode, 401)
  t.same([ctx.app.fairShare.waiting, ctx.app.fairShare.tenants], [0, 0])
})
