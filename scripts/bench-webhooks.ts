// npm run bench:webhooks -- [--tenants 20] [--seconds 10] [--rates 100,500] [--burst 3000] [--repeat 3]
//
// The asynchronous path, measured on one machine in one run, the server started as `npm start` starts it
// (its job worker inside; development mode, the only one that delivers to a receiver on 127.0.0.1):
//   1. the cost of fan-out on POST /v1/invoices: the create load (16 connections) with every tenant's
//      webhook endpoint disabled (the event is written, the trigger finds no endpoint) and enabled (a
//      delivery row and a job per invoice, delivered by the worker meanwhile), alternated --repeat times;
//   2. delivery at a paced rate of customer creations (--rates events/s, spread over the tenants): the
//      rate delivered, and the latency from the creating request's response (its commit) to the webhook
//      arriving at a receiver on 127.0.0.1, p50 and p99;
//   3. a burst of --burst events enqueued at once: how fast the worker drains it (events/s).
// Database: BENCH_DATABASE_URL (a superuser), else the embedded PostgreSQL under .data/bench.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { startEmbedded } from '../src/ops/embedded.ts'
import { benchKey } from './lib/bench-data.ts'
import { median, processStats, quantile, runLoad, say } from './lib/bench-runners.ts'
import { prepareDataset, startServer } from './lib/bench-server.ts'

/** A receiver that answers 204 and notes when each resource's webhook arrived (by the resource id). */
async function startReceiver (): Promise<{ url: string, arrived: Map<string, number>, close: () => void }> {
  const arrived = new Map<string, number>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const at = performance.now()
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { data: { resource: { id: string } } }
      if (!arrived.has(body.data.resource.id)) arrived.set(body.data.resource.id, at)
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return { url: `http://127.0.0.1:${port}/hook`, arrived, close: () => { server.close(); server.closeAllConnections() } }
}

async function api (url: string, tenant: number, method: string, route: string, body?: unknown): Promise<Response> {
  return fetch(`${url}${route}`, {
    method,
    headers: { authorization: `Bearer ${benchKey(tenant).key}`, 'content-type': 'application/json' },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  })
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      tenants: { type: 'string', default: '20' },
      seconds: { type: 'string', default: '10' },
      rates: { type: 'string', default: '100,500' },
      burst: { type: 'string', default: '3000' },
      repeat: { type: 'string', default: '3' },
    },
  })
  const tenants = Number(values.tenants)
  const seconds = Number(values.seconds)
  const repeat = Math.max(1, Number(values.repeat))
  let adminUrl = process.env.BENCH_DATABASE_URL
  let stopDatabase = async (): Promise<void> => {}
  if (adminUrl === undefined) {
    const embedded = await startEmbedded({
      dataDir: '.data/bench', port: Number(process.env.BENCH_PG_PORT ?? 54339), database: 'rowfence_unused',
    })
    adminUrl = embedded.adminUrl
    stopDatabase = embedded.stop
  }
  const receiver = await startReceiver()
  const dataset = await prepareDataset(adminUrl, tenants, 100)
  const server = await startServer('.', dataset.urls, {
    workers: '1',
    pool: '10',
    profile: false,
    env: {
      // The receiver is on 127.0.0.1, which production refuses to deliver to; development mode differs
      // from production only in what it generates when unset, and everything is set here.
      NODE_ENV: 'development',
      WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
      WEBHOOK_SECRET_KEY: Buffer.alloc(32, 7).toString('base64'),
    },
  })
  const report: Record<string, unknown> = { tenants, seconds, connections: 16 }
  try {
    // One endpoint per tenant (left from an earlier run, or created now), subscribed to invoices and customers.
    const endpoints: string[] = []
    for (let t = 1; t <= tenants; t++) {
      const listed = await (await api(server.url, t, 'GET', '/v1/webhook-endpoints')).json() as {
        data: Array<{ id: string }>
      }
      for (const old of listed.data) await api(server.url, t, 'DELETE', `/v1/webhook-endpoints/${old.id}`)
      const created = await api(server.url, t, 'POST', '/v1/webhook-endpoints',
        { url: receiver.url, event_types: ['invoice.*', 'customer.*'] })
      if (created.status !== 201) throw new Error(`creating an endpoint: ${created.status} ${await created.text()}`)
      endpoints.push(((await created.json()) as { id: string }).id)
    }
    const setEndpoints = async (status: 'enabled' | 'disabled'): Promise<void> => {
      await Promise.all(endpoints.map(async (id, i) =>
        api(server.url, i + 1, 'PATCH', `/v1/webhook-endpoints/${id}`, { status })))
    }

    // 1. The create load, without and with fan-out, alternated.
    const without: number[] = []
    const withFanOut: number[] = []
    const p99s: { without: number[], with: number[] } = { without: [], with: [] }
    for (let r = 0; r < repeat; r++) {
      for (const status of ['disabled', 'enabled'] as const) {
        await setEndpoints(status)
        const m = await runLoad({
          url: server.url, scenario: 'create-invoice', connections: 16, seconds, tenants, invoices: 100,
        })
        if ((m.errors ?? 0) > 0) say(`create (${status}): ${m.errors} errors`)
        ;(status === 'disabled' ? without : withFanOut).push(m.rps)
        p99s[status === 'disabled' ? 'without' : 'with'].push(m.p99)
        say(`create, endpoints ${status}: ${m.rps.toFixed(0)} req/s, p99 ${m.p99.toFixed(1)} ms`)
      }
    }
    // Let the worker catch up before measuring delivery.
    await waitForIdle(dataset.urls.ownerUrl)
    report.create = {
      without_fan_out_rps: median(without),
      with_fan_out_rps: median(withFanOut),
      ratio: median(withFanOut) / median(without),
      p99_ms: { without: median(p99s.without), with: median(p99s.with) },
    }

    // 2. Paced delivery.
    await setEndpoints('enabled')
    const paced: Array<Record<string, number>> = []
    for (const rate of values.rates.split(',').map(Number)) {
      receiver.arrived.clear()
      const committed = new Map<string, number>()
      const started = performance.now()
      let sent = 0
      const total = rate * seconds
      await new Promise<void>((resolve) => {
        const tick = setInterval(() => {
          const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate))
          for (; sent < due; sent++) {
            const tenant = (sent % tenants) + 1
            api(server.url, tenant, 'POST', '/v1/customers', { name: `paced ${sent}` }).then(async (res) => {
              const at = performance.now()
              if (res.status === 201) committed.set(((await res.json()) as { id: string }).id, at)
            }, (error: unknown) => { say(`a paced request failed: ${String(error)}`) })
          }
          if (sent >= total) { clearInterval(tick); resolve() }
        }, 5)
      })
      const deadline = performance.now() + 60_000
      const pending = (): boolean => receiver.arrived.size < committed.size || committed.size < total * 0.99
      while (pending() && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      const elapsed = (Math.max(...receiver.arrived.values()) - started) / 1000
      const latencies = [...committed].flatMap(([id, at]) => {
        const got = receiver.arrived.get(id)
        return got === undefined ? [] : [Math.max(0, got - at)]
      }).sort((a, b) => a - b)
      const row = {
        offered_per_s: rate,
        created: committed.size,
        delivered: latencies.length,
        delivered_per_s: latencies.length / elapsed,
        p50_ms: quantile(latencies, 0.5),
        p99_ms: quantile(latencies, 0.99),
      }
      paced.push(row)
      say(`paced ${rate}/s: ${row.delivered}/${row.created} delivered, ${row.delivered_per_s.toFixed(0)}/s, ` +
        `commit→receipt p50 ${row.p50_ms.toFixed(1)} ms, p99 ${row.p99_ms.toFixed(1)} ms`)
    }
    report.paced = paced

    // 3. A burst: enqueued as fast as the API takes it, drained by the worker meanwhile and after.
    receiver.arrived.clear()
    const burst = Number(values.burst)
    const burstStart = performance.now()
    let next = 0
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < burst) {
        const i = next++
        await api(server.url, (i % tenants) + 1, 'POST', '/v1/customers', { name: `burst ${i}` })
      }
    }))
    const enqueuedIn = (performance.now() - burstStart) / 1000
    const burstDeadline = performance.now() + 120_000
    while (receiver.arrived.size < burst && performance.now() < burstDeadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const drainedIn = (Math.max(...receiver.arrived.values()) - burstStart) / 1000
    report.burst = {
      events: burst,
      delivered: receiver.arrived.size,
      enqueued_in_s: enqueuedIn,
      delivered_in_s: drainedIn,
      delivered_per_s: receiver.arrived.size / drainedIn,
    }
    say(`burst of ${burst}: enqueued in ${enqueuedIn.toFixed(1)} s, all delivered in ${drainedIn.toFixed(1)} s ` +
      `(${(receiver.arrived.size / drainedIn).toFixed(0)} events/s)`)
    report.server_peak_rss_mb = (await processStats(server.pid)).hwmKb / 1024
  } finally {
    await server.stop()
    receiver.close()
    await stopDatabase()
  }
  const file = path.resolve('bench/results', `webhooks-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
  await mkdir(path.dirname(file), { recursive: true })
  await writeFile(file, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(JSON.stringify(report, null, 2) + '\n')
  say(`written to ${path.relative('.', file)}`)
}

/** Waits until the queue holds no job due to run (the worker has caught up), as the owner. */
async function waitForIdle (ownerUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: ownerUrl })
  await client.connect()
  try {
    for (;;) {
      const { rows } = await client.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM graphile_worker._private_jobs
          WHERE run_at <= now() AND attempts < max_attempts`)
      if (rows[0]!.n === 0) return
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  } finally {
    await client.end()
  }
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
