import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import { as, buildTestApp, provisionTenant, TEST_WEBHOOK_SECRET_KEY, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { waitUntil } from '../helpers/operator.ts'
import { startReceiver, startTestWorker, type Receiver } from '../helpers/webhooks.ts'

// The worker as its own process (`npm run worker`), killed and stopped for real.
const ctx = await buildTestApp(t, { DB_POOL_MAX: 10, WEBHOOK_ALLOW_PRIVATE_TARGETS: true })

const LEASE_MS = 1500

interface WorkerProcess {
  child: ChildProcess
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  output: () => string
}

/** `npm run worker`'s entry point with the environment an operator would give it. */
function spawnWorker (env: Record<string, string> = {}): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/jobs/main.ts')], {
    env: {
      PATH: process.env.PATH,
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      WORKER_DATABASE_URL: ctx.db.appUrl,
      WEBHOOK_SECRET_KEY: TEST_WEBHOOK_SECRET_KEY,
      WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
      WEBHOOK_TIMEOUT_MS: '20000',
      WORKER_POLL_INTERVAL_MS: '100',
      WORKER_LEASE_MS: String(LEASE_MS),
      WORKER_SHUTDOWN_GRACE_MS: '3000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => { resolve({ code, signal }) })
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  return { child, exited, output: () => output }
}

async function endpoint (who: ProvisionedTenant, receiver: Receiver): Promise<void> {
  const res = await ctx.app.inject(as(who, {
    method: 'POST', url: '/v1/webhook-endpoints', payload: { url: receiver.url, event_types: ['customer.*'] },
  }))
  if (res.statusCode !== 201) throw new Error(`creating an endpoint failed: ${res.statusCode} ${res.body}`)
}

async function customers (who: ProvisionedTenant, n: number): Promise<void> {
  await Promise.all(Array.from({ length: n }, async (_, i) => {
    const res = await ctx.app.inject(as(who, { method: 'POST', url: '/v1/customers', payload: { name: `c${i}` } }))
    if (res.statusCode !== 201) throw new Error(`creating a customer failed: ${res.statusCode}`)
  }))
}

const settled = async (tenantId: string): Promise<number> => {
  const [row] = await query<{ n: number }>(ctx.db.adminUrl,
    "SELECT count(*)::int AS n FROM webhook_deliveries WHERE tenant_id = $1 AND status = 'succeeded'", [tenantId])
  return row!.n
}

t.test('a worker killed mid-delivery: the delivery completes after its lease, with the same webhook-id', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  // The first request is held open: the worker is killed while it waits for the answer.
  receiver.answer((_request, i) => (i === 0 ? 'hang' : { status: 200 }))
  await endpoint(tenant, receiver)
  const doomed = spawnWorker()
  await customers(tenant, 1)
  await waitUntil('the first attempt to reach the receiver', async () => receiver.received.length === 1, 30_000)
  doomed.child.kill('SIGKILL')
  t.equal((await doomed.exited).signal, 'SIGKILL')
  // Nothing was recorded, and the job is still locked by the dead worker: only its lease frees it.
  t.equal(await settled(tenant.id), 0)
  const locked = await query(ctx.db.adminUrl,
    "SELECT 1 FROM graphile_worker._private_jobs WHERE payload->>'tenant_id' = $1 AND locked_by IS NOT NULL",
    [tenant.id])
  t.equal(locked.length, 1, 'the job stays locked by the killed worker')
  await startTestWorker(t, ctx, { WORKER_LEASE_MS: LEASE_MS })
  await waitUntil('the delivery after the lease', async () => await settled(tenant.id) === 1, 30_000)
  t.equal(receiver.received.length, 2, 'sent again')
  t.equal(receiver.ids().size, 1, 'with the same webhook-id, for the receiver to deduplicate')
})

t.test('SIGTERM under load loses nothing: running jobs finish or go back to the queue', async (t) => {
  const tenant = await provisionTenant(ctx)
  const receiver = await startReceiver(t)
  receiver.answer(() => ({ status: 200, delayMs: 150 }))
  await endpoint(tenant, receiver)
  const worker = spawnWorker({ WORKER_CONCURRENCY: '4' })
  await customers(tenant, 60)
  await waitUntil('deliveries under way', async () => receiver.received.length >= 8, 30_000)
  worker.child.kill('SIGTERM')
  const exit = await worker.exited
  t.equal(exit.code, 0, 'a clean exit on SIGTERM')
  if (exit.code !== 0) t.comment(worker.output().slice(-2000))
  t.match(worker.output(), /worker_stopped/, 'it says it stopped')
  const [{ n: running }] = await query<{ n: number }>(ctx.db.adminUrl,
    'SELECT count(*)::int AS n FROM graphile_worker._private_jobs WHERE locked_at IS NOT NULL') as [{ n: number }]
  t.equal(running, 0, 'no job is left locked by the stopped worker')
  t.same(await query(ctx.db.adminUrl, 'SELECT 1 FROM worker_heartbeats'), [], 'nor its heartbeat')
  t.ok(await settled(tenant.id) < 60, 'it stopped before the backlog was done')
  await startTestWorker(t, ctx)
  await waitUntil('every delivery', async () => await settled(tenant.id) === 60, 60_000)
  t.equal(receiver.ids().size, 60, 'all 60 events arrived')
})
