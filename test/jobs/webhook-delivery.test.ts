import t, { type Test } from 'tap'
import pg from 'pg'
import { TENANT_LOCK_SALT, withTenantTransaction } from '../../src/db/tenant-transaction.ts'
import { deliverWebhookJob, retryDelayMs } from '../../src/jobs/deliver-webhook-job.ts'
import { webhookSettings } from '../../src/webhooks/settings.ts'
import { verifyWebhook } from '../../src/webhooks/signature.ts'
import { loadConfig } from '../../src/config.ts'
import { as, buildTestApp, provisionTenant, TEST_WEBHOOK_SECRET_KEY, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { holdTransaction, someoneWaits, waitUntil } from '../helpers/operator.ts'
import { startReceiver, startTestWorker, type Receiver } from '../helpers/webhooks.ts'

const ctx = await buildTestApp(t, { DB_POOL_MAX: 10, DB_POOL_QUEUE_MAX: 512, WEBHOOK_ALLOW_PRIVATE_TARGETS: true })
const admin = { authorization: `Bearer ${ctx.adminToken}` }

interface Endpoint { id: string, secret: string, status: string }

async function endpoint (who: ProvisionedTenant, receiver: Receiver, eventTypes = ['customer.*']): Promise<Endpoint> {
  const res = await ctx.app.inject(as(who, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: receiver.url, event_types: eventTypes },
  }))
  if (res.statusCode !== 201) throw new Error(`creating an endpoint failed: ${res.statusCode} ${res.body}`)
  return res.json<Endpoint>()
}

async function customer (who: ProvisionedTenant, name: string): Promise<string> {
  const res = await ctx.app.inject(as(who, { method: 'POST', url: '/v1/customers', payload: { name } }))
  if (res.statusCode !== 201) throw new Error(`creating a customer failed: ${res.statusCode} ${res.body}`)
  return res.json<{ id: string }>().id
}

const deliveries = async (tenantId: string): Promise<Array<{ id: string, status: string, attempts: number }>> =>
  query(ctx.db.adminUrl, 'SELECT id, status, attempts FROM webhook_deliveries WHERE tenant_id = $1 ORDER BY created_at',
    [tenantId])

const jobsOf = async (tenantId: string): Promise<unknown[]> =>
  query(ctx.db.adminUrl, "SELECT id FROM graphile_worker._private_jobs WHERE payload->>'tenant_id' = $1", [tenantId])

/**
 * The delivery handler run directly, as a worker runs one job (of the queue's 10 attempts at most), on
 * a pool of the runtime role of its own; `secretKey` other than the app's: a key that opens nothing.
 */
function directRuns (t: Test, secretKey = TEST_WEBHOOK_SECRET_KEY): {
  pool: pg.Pool, deliver: (job: { tenantId: string, ref: string, attempt: number }) => Promise<void>
} {
  const pool = new pg.Pool({ connectionString: ctx.db.appUrl, max: 2 })
  t.teardown(() => pool.end())
  const settings = webhookSettings({
    ...loadConfig({}), WEBHOOK_SECRET_KEY: secretKey, WEBHOOK_ALLOW_PRIVATE_TARGETS: true,
  })
  const handler = deliverWebhookJob(settings)
  const context = { pool, log: ctx.app.log, signal: new AbortController().signal, quotaDefaults: '{}' }
  return { pool, deliver: (job) => handler({ ...job, jobId: `direct-${job.attempt}`, maxAttempts: 10 }, context) }
}

t.test('retries back off 4 times longer each, capped at 12 hours, with ±20% jitter, over about a day', async (t) => {
  t.equal(retryDelayMs(1, 15_000, () => 0.5), 15_000)
  t.equal(retryDelayMs(2, 15_000, () => 0.5), 60_000)
  t.equal(retryDelayMs(3, 15_000, () => 0), 0.8 * 240_000, 'the least jitter')
  t.equal(retryDelayMs(3, 15_000, () => 1), 1.2 * 240_000, 'the most jitter')
  t.equal(retryDelayMs(12, 15_000, () => 0.5), 12 * 3_600_000, 'capped')
  const defaults = loadConfig({})
  let total = 0
  for (let attempt = 1; attempt < defaults.WEBHOOK_MAX_ATTEMPTS; attempt++) {
    total += retryDelayMs(attempt, defaults.WEBHOOK_RETRY_BASE_MS, () => 0.5)
  }
  t.ok(total > 20 * 3_600_000 && total < 36 * 3_600_000, `the default schedule spans ${total / 3_600_000} hours`)
})

t.test('an event arrives signed per Standard Webhooks, webhook-id = the event id, once', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  const hook = await endpoint(tenant, receiver)
  await startTestWorker(t, ctx)
  const customerId = await customer(tenant, 'Ada')
  await waitUntil('the delivery', async () => receiver.received.length === 1)
  const [request] = receiver.received
  t.ok(verifyWebhook(hook.secret, request!.headers, request!.body), 'the signature verifies with the secret')
  t.notOk(verifyWebhook(hook.secret, request!.headers, request!.body.replace('Ada', 'Eve')), 'and only that body')
  const body = JSON.parse(request!.body) as { type: string, data: { id: string, data: { id: string } } }
  t.equal(body.type, 'customer.created')
  t.equal(body.data.data.id, customerId, 'the resource as the API showed it')
  t.equal(request!.headers['webhook-id'], body.data.id, 'webhook-id is the event id')
  const [event] = await query(ctx.db.adminUrl, 'SELECT id FROM events WHERE tenant_id = $1 AND resource_id = $2',
    [tenant.id, customerId])
  t.equal(body.data.id, (event as { id: string }).id)
  await waitUntil('the delivery settles', async () => (await deliveries(tenant.id))[0]?.status === 'succeeded')
  const res = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/webhook-endpoints/${hook.id}/deliveries` }))
  t.equal(res.statusCode, 200)
  const listed = JSON.stringify(res.json())
  t.match(listed, /"status_code":200/, 'the attempt is visible, with its status')
  t.match(listed, /"latency_ms":\d+/)
})

t.test('metrics count jobs and deliveries, with no label per tenant', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await startTestWorker(t, ctx, {}, { metrics: true })
  await customer(tenant, 'Counted')
  await waitUntil('the delivery', async () => (await deliveries(tenant.id))[0]?.status === 'succeeded')
  const res = await ctx.app.inject({ method: 'GET', url: '/metrics', headers: admin })
  t.equal(res.statusCode, 200)
  t.match(res.body, /^rowfence_webhook_deliveries_total\{outcome="succeeded"\} [1-9]/m)
  t.match(res.body, /^rowfence_webhook_delivery_latency_seconds_count\{outcome="succeeded"\} [1-9]/m)
  t.match(res.body, /^rowfence_jobs_total\{task="deliver_webhook",outcome="succeeded"\} [1-9]/m)
  t.match(res.body, /^# TYPE rowfence_job_queue_depth gauge/m)
  t.match(res.body, /^# TYPE rowfence_job_queue_oldest_ready_seconds gauge/m)
  t.notMatch(res.body, tenant.id, 'no tenant id in any label')
})

t.test('a request that fails after writing leaves no event, no delivery and no job', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await query(ctx.db.adminUrl, `
    CREATE FUNCTION refuse_doomed_hook() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.name = 'Doomed' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NEW; END $$;
    CREATE CONSTRAINT TRIGGER refuse_doomed_hook AFTER INSERT ON customers DEFERRABLE INITIALLY DEFERRED
      FOR EACH ROW EXECUTE FUNCTION refuse_doomed_hook()`)
  t.teardown(() => query(ctx.db.adminUrl,
    'DROP TRIGGER refuse_doomed_hook ON customers; DROP FUNCTION refuse_doomed_hook()'))
  const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Doomed' } }))
  t.equal(res.statusCode, 500)
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM events WHERE tenant_id = $1 AND type = 'customer.created'",
    [tenant.id]), [], 'no event')
  t.same(await deliveries(tenant.id), [], 'no delivery')
  t.same(await jobsOf(tenant.id), [], 'no job')
  // The same write, committed, has all three: the trigger fans out in the writing transaction.
  await customer(tenant, 'Kept')
  t.equal((await deliveries(tenant.id)).length, 1)
  t.equal((await jobsOf(tenant.id)).length, 1)
})

t.test('200 concurrent writes: 200 events, each delivered, none twice', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await startTestWorker(t, ctx, { WORKER_CONCURRENCY: 8 })
  await Promise.all(Array.from({ length: 200 }, async (_, i) => customer(tenant, `c${i}`)))
  const created = await query<{ n: number }>(ctx.db.adminUrl,
    "SELECT count(*)::int AS n FROM events WHERE tenant_id = $1 AND type = 'customer.created'", [tenant.id])
  t.equal(created[0]!.n, 200)
  await waitUntil('200 deliveries', async () => receiver.received.length >= 200, 60_000)
  await waitUntil('all settled', async () => (await deliveries(tenant.id)).every((d) => d.status === 'succeeded'))
  t.equal(receiver.ids().size, 200, '200 distinct webhook-ids')
  t.equal(receiver.received.length, 200, 'none twice')
})

t.test('a failing endpoint is retried with backoff until it answers', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  receiver.answer((_request, i) => (i < 2 ? { status: 500, body: 'down for maintenance' } : { status: 204 }))
  await endpoint(tenant, receiver)
  await startTestWorker(t, ctx)
  await customer(tenant, 'Retried')
  await waitUntil('success on the third attempt', async () =>
    (await deliveries(tenant.id))[0]?.status === 'succeeded')
  const attempts = await query<{ attempt: number, status_code: number, response_excerpt: string }>(ctx.db.adminUrl,
    'SELECT attempt, status_code, response_excerpt FROM webhook_attempts WHERE tenant_id = $1 ORDER BY attempt',
    [tenant.id])
  t.same(attempts.map((a) => a.status_code), [500, 500, 204])
  t.equal(attempts[0]!.response_excerpt, 'down for maintenance', 'the response is recorded')
  t.equal(receiver.ids().size, 1, 'every attempt carries the same webhook-id')
})

t.test('attempts run out; an endpoint failing for long enough is disabled, with an event', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  receiver.answer(() => ({ status: 503 }))
  const hook = await endpoint(tenant, receiver)
  await startTestWorker(t, ctx, { WEBHOOK_MAX_ATTEMPTS: 3, WEBHOOK_DISABLE_AFTER_MS: 60_000 })
  await customer(tenant, 'First')
  await waitUntil('the delivery to give up', async () => (await deliveries(tenant.id))[0]?.status === 'failed')
  t.equal((await deliveries(tenant.id))[0]!.attempts, 3, 'WEBHOOK_MAX_ATTEMPTS attempts')
  const failing = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/webhook-endpoints/${hook.id}` }))
  t.equal(failing.json<Endpoint>().status, 'enabled', 'not yet failing for WEBHOOK_DISABLE_AFTER_MS')
  // As if its first failure had been two minutes ago: the next failed attempt disables it.
  await query(ctx.db.adminUrl,
    "UPDATE webhook_endpoints SET failing_since = now() - interval '2 minutes' WHERE tenant_id = $1", [tenant.id])
  await customer(tenant, 'Second')
  await waitUntil('the endpoint to be disabled', async () => (await query(ctx.db.adminUrl,
    "SELECT 1 FROM webhook_endpoints WHERE tenant_id = $1 AND status = 'disabled'", [tenant.id])).length === 1)
  await waitUntil('its pending retry to be canceled', async () =>
    (await deliveries(tenant.id))[1]?.status === 'canceled')
  const got = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/webhook-endpoints/${hook.id}` }))
  t.equal(got.json<Endpoint>().status, 'disabled')
  const disabled = await query<{ actor_type: string }>(ctx.db.adminUrl,
    "SELECT actor_type FROM events WHERE tenant_id = $1 AND type = 'webhook_endpoint.disabled'", [tenant.id])
  t.same(disabled, [{ actor_type: 'system' }], 'one event says so, by the system')
  t.notMatch(JSON.stringify(await query(ctx.db.adminUrl,
    "SELECT data FROM events WHERE tenant_id = $1 AND type = 'webhook_endpoint.disabled'", [tenant.id])),
  /sealed|whsec_/, 'without its secret')
  const before = (await deliveries(tenant.id)).length
  await customer(tenant, 'After')
  t.equal((await deliveries(tenant.id)).length, before, 'a disabled endpoint gets no new deliveries')
})

t.test('redelivery sends the event again with the same webhook-id', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await startTestWorker(t, ctx)
  const customerId = await customer(tenant, 'Again')
  await waitUntil('the first delivery', async () => receiver.received.length === 1)
  const [event] = await query<{ id: string }>(ctx.db.adminUrl,
    'SELECT id FROM events WHERE tenant_id = $1 AND resource_id = $2', [tenant.id, customerId])
  const res = await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/events/${event!.id}/redeliver` }))
  t.equal(res.statusCode, 202, res.body)
  await waitUntil('the second delivery', async () => receiver.received.length === 2)
  t.equal(receiver.received[1]!.headers['webhook-id'], event!.id)
})

t.test('after a secret rotation both secrets sign during the grace period', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  const hook = await endpoint(tenant, receiver)
  const rotated = await ctx.app.inject(as(tenant, {
    method: 'POST', url: `/v1/webhook-endpoints/${hook.id}/rotate-secret`,
  }))
  t.equal(rotated.statusCode, 200, rotated.body)
  const fresh = rotated.json<{ secret: string }>().secret
  t.not(fresh, hook.secret)
  await startTestWorker(t, ctx)
  await customer(tenant, 'Rotated')
  await waitUntil('the delivery', async () => receiver.received.length === 1)
  const [request] = receiver.received
  t.equal(String(request!.headers['webhook-signature']).split(' ').length, 2, 'two signatures')
  t.ok(verifyWebhook(fresh, request!.headers, request!.body), 'the new secret verifies')
  t.ok(verifyWebhook(hook.secret, request!.headers, request!.body), 'the old one too, during the grace period')
  // Once the grace period is over, only the new one signs.
  await query(ctx.db.adminUrl,
    "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second' WHERE tenant_id = $1",
    [tenant.id])
  await customer(tenant, 'Later')
  await waitUntil('the next delivery', async () => receiver.received.length === 2)
  t.ok(verifyWebhook(fresh, receiver.received[1]!.headers, receiver.received[1]!.body))
  t.notOk(verifyWebhook(hook.secret, receiver.received[1]!.headers, receiver.received[1]!.body))
})

t.test('without the private-targets switch the worker connects to no private address', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  // The API refused such a URL when the switch was off (webhook-endpoints.test.ts); one set while it
  // was on, or by DNS changing its answer, is refused again by the worker, before any connection.
  const port = new URL(receiver.url).port
  await query(ctx.db.adminUrl, 'UPDATE webhook_endpoints SET url = $2 WHERE tenant_id = $1',
    [tenant.id, `https://localhost:${port}/hook`])
  await startTestWorker(t, ctx, { WEBHOOK_ALLOW_PRIVATE_TARGETS: false, WEBHOOK_MAX_ATTEMPTS: 1 })
  await customer(tenant, 'Nowhere')
  await waitUntil('the refusal to be recorded', async () => (await deliveries(tenant.id))[0]?.status === 'failed')
  const [attempt] = await query<{ status_code: number | null, error: string }>(ctx.db.adminUrl,
    'SELECT status_code, error FROM webhook_attempts WHERE tenant_id = $1', [tenant.id])
  t.equal(attempt!.status_code, null)
  t.equal(attempt!.error, 'refused: the target address is not public', 'without saying where it resolved')
  t.equal(receiver.connections(), 0, 'no connection was attempted')
})

t.test("a tenant whose endpoint hangs does not delay another tenant's deliveries", async (t) => {
  const noisy = await provisionTenant(ctx)
  const quiet = await provisionTenant(ctx)
  const stuck = await startReceiver(t)
  stuck.answer(() => 'hang')
  const prompt = await startReceiver(t)
  await endpoint(noisy, stuck)
  await endpoint(quiet, prompt)
  await startTestWorker(t, ctx, { WORKER_CONCURRENCY: 8, WEBHOOK_TIMEOUT_MS: 10_000 })
  await Promise.all(Array.from({ length: 20 }, async (_, i) => customer(noisy, `n${i}`)))
  // The noisy tenant takes its share of the 8 slots (4; one more per fetch racing with its own), and the
  // rest of its backlog waits: its flag is skipped while it holds its share.
  await waitUntil('the noisy tenant to hold its share', async () => stuck.received.length >= 4)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const held = stuck.received.length
  t.ok(held < 8, `the noisy tenant holds ${held} of the 8 slots, not all`)
  await customer(quiet, 'Quiet')
  await waitUntil("the quiet tenant's delivery", async () => prompt.received.length === 1)
  const noisyAttempts = await query(ctx.db.adminUrl, 'SELECT 1 FROM webhook_attempts WHERE tenant_id = $1', [noisy.id])
  t.equal(noisyAttempts.length, 0, "it arrived while every one of the noisy tenant's attempts still hung")
  t.equal(stuck.received.length, held, 'and the noisy tenant took no more slots meanwhile')
})

t.test('a job names its tenant and a row: another tenant\'s row is not found, and nothing is written', async (t) => {
  const victim = await provisionTenant(ctx)
  const attacker = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(victim, receiver)
  await customer(victim, 'Secret')
  const [delivery] = await deliveries(victim.id)
  const { pool, deliver } = directRuns(t)
  // The victim's delivery id under the attacker's tenant: as a tampered or forged job would carry it.
  await deliver({ tenantId: attacker.id, ref: delivery!.id, attempt: 1 })
  t.equal(receiver.received.length, 0, 'nothing sent')
  t.same(await deliveries(victim.id), [{ ...delivery, status: 'pending', attempts: 0 }], 'nothing written')
  t.same(await query(ctx.db.adminUrl, 'SELECT 1 FROM webhook_attempts WHERE tenant_id IN ($1, $2)',
    [victim.id, attacker.id]), [])
  // Enqueueing names the bound tenant's rows only.
  await t.rejects(withTenantTransaction(pool, attacker.id, async (trx) => {
    await trx.client.query("SELECT enqueue_tenant_job('deliver_webhook', $1)", [delivery!.id])
  }), /not a row of the bound tenant/)
  await t.rejects(query(ctx.db.appUrl, "SELECT enqueue_tenant_job('deliver_webhook', $1)", [delivery!.id]),
    /no tenant is bound/, 'nor with no tenant bound')
  // The queue itself takes no job from the runtime role but through that function.
  const payload = JSON.stringify({ tenant_id: victim.id, ref: delivery!.id })
  await t.rejects(query(ctx.db.appUrl, "SELECT graphile_worker.add_job('deliver_webhook', $1::json)", [payload]),
    /permission denied/)
  await t.rejects(query(ctx.db.appUrl, 'INSERT INTO graphile_worker._private_jobs (task_id, payload) ' +
    'SELECT id, $1::json FROM graphile_worker._private_tasks LIMIT 1', [payload]), /permission denied/)
})

t.test('a job run again after its attempt was recorded sends nothing until the retry is due', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  receiver.answer(() => ({ status: 500 }))
  await endpoint(tenant, receiver)
  const worker = await startTestWorker(t, ctx, { WEBHOOK_RETRY_BASE_MS: 600_000 })
  await customer(tenant, 'Once')
  await waitUntil('the first attempt', async () => (await deliveries(tenant.id))[0]?.attempts === 1)
  await worker.stop()
  const [delivery] = await deliveries(tenant.id)
  // As when a worker dies after recording the attempt but before the queue heard the job was done.
  const { deliver } = directRuns(t)
  await deliver({ tenantId: tenant.id, ref: delivery!.id, attempt: 2 })
  t.equal(receiver.received.length, 1, 'not sent again before its retry is due')
  t.equal((await deliveries(tenant.id))[0]!.attempts, 1)
  t.equal((await jobsOf(tenant.id)).length, 1, 'one retry job, not two')
  // The queue's last run of a job that keeps throwing (here: a key that no longer opens the secret)
  // marks the delivery failed, so none stays pending with no job left.
  const wrongKey = directRuns(t, Buffer.alloc(32, 1).toString('base64')).deliver
  await query(ctx.db.adminUrl, 'UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1', [delivery!.id])
  await t.rejects(wrongKey({ tenantId: tenant.id, ref: delivery!.id, attempt: 3 }),
    'an early run throws, for the queue to retry')
  await wrongKey({ tenantId: tenant.id, ref: delivery!.id, attempt: 10 })
  t.match(await deliveries(tenant.id), [{ status: 'failed', attempts: 2 }], 'the last one marks it failed')
})

t.test("a job for a tenant being moved waits for the move's lock, then delivers", async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await customer(tenant, 'Moving')
  // The lock a placement move or an erasure holds exclusively while it works (bind_tenant takes it shared).
  const move = await holdTransaction(ctx.db.ownerUrl,
    [['SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))', [tenant.id, TENANT_LOCK_SALT]]])
  t.teardown(() => move.release())
  await startTestWorker(t, ctx)
  await waitUntil('the job to wait on the lock', async () => someoneWaits(ctx, /bind_tenant/))
  t.equal(receiver.received.length, 0, 'nothing is sent while the tenant is held')
  await move.release()
  await waitUntil('the delivery once the move is over', async () => receiver.received.length === 1)
})

t.test('erasing a tenant removes its endpoints, deliveries and pending jobs', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  await endpoint(tenant, receiver)
  await customer(tenant, 'Gone')
  t.equal((await jobsOf(tenant.id)).length, 1, 'a pending job')
  const erased = await ctx.app.inject({ method: 'DELETE', url: `/admin/v1/tenants/${tenant.id}`, headers: admin })
  t.equal(erased.statusCode, 200, erased.body)
  t.same(await jobsOf(tenant.id), [], 'its jobs are gone')
  t.same(await query(ctx.db.adminUrl, 'SELECT 1 FROM webhook_endpoints WHERE tenant_id = $1', [tenant.id]), [])
  t.same(await deliveries(tenant.id), [])
  const receipt = JSON.stringify(erased.json())
  t.match(receipt, /"webhook_endpoints":1/, 'the receipt counts the endpoints')
  t.match(receipt, /"jobs":1/, 'and the jobs')
})
