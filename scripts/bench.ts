// npm run bench -- [--tenants 100] [--invoices 2000] [--seconds 10] [--repeat 3] [--soak 0]
//                  [--soak-scenario get-invoice] [--connections 16,64]
//                  [--scenarios healthz,get-invoice,list-invoices,create-invoice,forged-key-huge-body] [--workers 1]
//                  [--pool 10] [--server-dir .] [--label name] [--growth 1000x10000] [--noisy-b-rate 50]
//                  [--before-dir DIR (with --scenarios limits-cost)]
//
// Measures the server against the database's own ceiling, in one run on one machine:
//   1. seeds the dataset (tenants × invoices of 3 lines, one key per tenant; reused between runs),
//   2. starts the server in production mode as its own process,
//   3. for each scenario and concurrency, drives HTTP load from another process (autocannon), then
//      runs pgbench with the same SQL transaction the server performs per request (BEGIN, the binding,
//      the credential check, the route's statements, COMMIT) at the same concurrency,
//   4. prints one table — req/s, p50, p99 and each as a ratio to pgbench — with the server's peak RSS,
//      CPU and database round trips per request, and writes it to bench/results/.
// --growth TxI instead measures how one read's latency grows from the --tenants × --invoices dataset to
// T tenants × I invoices (see measureGrowth, scripts/lib/bench-growth.ts).
// --scenarios noisy-neighbour: one tenant's latency alone and while another hammers the server, under
// several limit configurations (servers of its own; see scripts/lib/bench-noisy.ts).
// --scenarios limits-cost --before-dir DIR: what limits and metering cost, --server-dir's server against DIR's,
// at the first --connections (servers and databases of their own; see scripts/lib/bench-limits-cost.ts).
// Database: BENCH_DATABASE_URL (a superuser), else an embedded PostgreSQL kept under .data/bench.
// `--server-dir` runs another checkout's server against the same data (before/after comparisons).
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { startEmbedded } from '../src/ops/embedded.ts'
import type { Scenario } from './lib/bench-data.ts'
import { measureGrowth, writeGrowth } from './lib/bench-growth.ts'
import { measureLimitsCost } from './lib/bench-limits-cost.ts'
import { measureNoisyNeighbour } from './lib/bench-noisy.ts'
import {
  findPgbench, median, processStats, runLoad, runPgbench, say, WRK, type Measure,
} from './lib/bench-runners.ts'
import { prepareDataset, scrapeRoundTrips, startServer, type RunningServer } from './lib/bench-server.ts'
import { pgbenchScripts } from './lib/bench-sql.ts'

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      tenants: { type: 'string', default: '100' },
      invoices: { type: 'string', default: '2000' },
      seconds: { type: 'string', default: '10' },
      connections: { type: 'string', default: '16,64' },
      scenarios: { type: 'string', default: 'healthz,get-invoice,list-invoices,create-invoice,forged-key-huge-body' },
      workers: { type: 'string', default: '1' },
      pool: { type: 'string', default: '10' },
      'server-dir': { type: 'string', default: '.' },
      label: { type: 'string', default: 'current' },
      profile: { type: 'boolean', default: false },
      soak: { type: 'string', default: '0' },
      'soak-scenario': { type: 'string', default: 'get-invoice' },
      repeat: { type: 'string', default: '3' },
      growth: { type: 'string' },
      'noisy-b-rate': { type: 'string', default: '50' },
      'before-dir': { type: 'string' },
    },
  })
  const tenants = Number(values.tenants)
  const invoices = Number(values.invoices)
  const seconds = Number(values.seconds)
  const connections = values.connections.split(',').map(Number)
  const selected = values.scenarios.split(',')
  const scenarios = selected.filter((s) => s !== 'noisy-neighbour' && s !== 'limits-cost') as Scenario[]
  const serverDir = path.resolve(values['server-dir'])
  const repeat = Math.max(1, Number(values.repeat))
  const soakScenario = values['soak-scenario'] as Scenario
  if (!['healthz', 'get-invoice', 'list-invoices', 'create-invoice'].includes(soakScenario)) {
    throw new Error(`--soak-scenario: unknown scenario ${soakScenario}`)
  }

  const beforeDir = selected.includes('limits-cost') ? values['before-dir'] : undefined
  if (selected.includes('limits-cost') && beforeDir === undefined) {
    throw new Error('--scenarios limits-cost needs --before-dir (the checkout from before limits)')
  }

  const growth = values.growth === undefined ? undefined : /^(\d+)x(\d+)$/.exec(values.growth)
  if (growth === null) throw new Error(`--growth: expected TENANTSxINVOICES (e.g. 1000x10000), got ${values.growth}`)

  const pgbench = findPgbench()
  if (pgbench === undefined) {
    say('pgbench is MISSING (install PostgreSQL client tools, e.g. Debian postgresql-client): ' +
      'the server is measured without its reference')
  }

  let adminUrl = process.env.BENCH_DATABASE_URL
  let stopDatabase = async (): Promise<void> => {}
  if (adminUrl === undefined) {
    const embedded = await startEmbedded({
      dataDir: '.data/bench',
      port: Number(process.env.BENCH_PG_PORT ?? 54339),
      database: 'rowfence_unused',
    })
    adminUrl = embedded.adminUrl
    stopDatabase = embedded.stop
    say('using the embedded PostgreSQL under .data/bench (BENCH_DATABASE_URL to use another server)')
  }
  // Nothing below may leave an embedded database running when it fails.
  if (beforeDir !== undefined) {
    const { workers, pool, label, profile } = values
    const job = { adminUrl, tenants, invoices, seconds, repeat, workers, pool, label, profile }
    const dirs = { beforeDir: path.resolve(beforeDir), afterDir: serverDir }
    await measureLimitsCost({ ...job, ...dirs, connections: connections[0]! })
      .catch(async (error: unknown) => { await stopDatabase(); throw error })
    if (scenarios.length === 0 && !selected.includes('noisy-neighbour')) return await stopDatabase()
  }
  const data = await prepareDataset(adminUrl, tenants, invoices)
    .catch(async (error: unknown) => { await stopDatabase(); throw error })
  const { urls, tables, shards } = data
  if (growth !== undefined) {
    const servers: RunningServer[] = []
    try {
      const large = await prepareDataset(adminUrl, Number(growth[1]), Number(growth[2]))
      const options = { workers: values.workers, pool: values.pool, profile: false }
      servers.push(await startServer(serverDir, urls, options))
      servers.push(await startServer(serverDir, large.urls, options))
      const rows = await measureGrowth({
        pgbench,
        base: data,
        large,
        servers: servers as [RunningServer, RunningServer],
        connections,
        seconds,
        repeat,
      })
      await writeGrowth(rows, {
        base: data,
        large,
        seconds,
        repeat,
        label: values.label,
        workers: values.workers,
        pool: values.pool,
      })
    } finally {
      for (const server of servers) await server.stop()
      await stopDatabase()
    }
    return
  }

  if (selected.includes('noisy-neighbour')) {
    const { workers, pool, label } = values
    await measureNoisyNeighbour({
      serverDir, urls, tenants, invoices, seconds, repeat, workers, pool, label, bRate: Number(values['noisy-b-rate']),
    }).catch(async (error: unknown) => { await stopDatabase(); throw error })
    if (scenarios.length === 0) return await stopDatabase()
  }

  const server = await startServer(serverDir, urls, {
    workers: values.workers,
    pool: values.pool,
    profile: values.profile,
  })
    .catch(async (error: unknown) => { await stopDatabase(); throw error })
  const url = server.url
  say(`server (${values.label}, ${values.workers} worker(s), pool ${values.pool}) at ${url}; ` +
    `load from ${WRK ?? 'autocannon (install wrk for a lighter load generator)'}`)

  const rows: Array<Record<string, unknown>> = []
  const soak: Array<{ at_s: number, rss_mb: number }> = []
  let soakResult: Measure | undefined
  try {
    for (const scenario of scenarios) {
      for (const c of connections) {
        const job = { url, scenario, connections: c, seconds, tenants, invoices }
        await runLoad({ ...job, seconds: 2 }) // warm-up: connections, caches, JIT
        const sqlScenario = scenario === 'healthz' || scenario === 'forged-key-huge-body' ? undefined : scenario
        const measurable = sqlScenario !== undefined && pgbench !== undefined
        const naiveScripts = measurable
          ? await pgbenchScripts(sqlScenario, 'naive', tables, tenants, invoices, shards)
          : []
        const serverScripts = measurable
          ? await pgbenchScripts(sqlScenario, 'server', tables, tenants, invoices, shards)
          : []
        // The machine is shared and noisy: the server and its references take turns, `repeat` times,
        // and each figure is the median of its runs; a ratio is the median of the runs' own ratios.
        const runs: Array<{ http: Measure, reference?: Measure, sameSql?: Measure, cpu: number, trips?: number }> = []
        let peakKb = 0
        let duringKb = 0
        for (let r = 0; r < repeat; r++) {
          const tripsBefore = await scrapeRoundTrips(url)
          const before = await processStats(server.pid)
          const started = performance.now()
          // The server's resident set while this scenario runs (VmHWM is the peak since start-up).
          const sampler = setInterval(() => {
            processStats(server.pid).then((s) => { duringKb = Math.max(duringKb, s.rssKb) }, () => {})
          }, 250)
          const http = await runLoad(job).finally(() => { clearInterval(sampler) })
          const elapsed = (performance.now() - started) / 1000
          const after = await processStats(server.pid)
          const tripsAfter = await scrapeRoundTrips(url)
          peakKb = Math.max(peakKb, after.hwmKb)
          // With several workers, /metrics answers for one of them only: no count then.
          const trips = values.workers === '1' && tripsBefore !== undefined && tripsAfter !== undefined &&
            http.requests !== undefined && http.requests > 0
            // the scrape itself is not a round trip; only requests count
            ? (tripsAfter - tripsBefore - 1) / http.requests
            : undefined
          const reference = measurable ? await runPgbench(pgbench, urls.appUrl, naiveScripts, c, seconds) : undefined
          const sameSql = measurable ? await runPgbench(pgbench, urls.appUrl, serverScripts, c, seconds) : undefined
          runs.push({
            http,
            ...(reference !== undefined && { reference }),
            ...(sameSql !== undefined && { sameSql }),
            cpu: ((after.cpuTicks - before.cpuTicks) / 100) / elapsed * 100,
            ...(trips !== undefined && { trips }),
          })
        }

        const http = {
          rps: median(runs.map((x) => x.http.rps)),
          p50: median(runs.map((x) => x.http.p50)),
          p99: median(runs.map((x) => x.http.p99)),
          errors: runs.reduce((n, x) => n + (x.http.errors ?? 0), 0),
        }
        const refs = runs.flatMap((x) => x.reference === undefined ? [] : [{ ...x.reference, http: x.http }])
        const reference = refs.length === 0
          ? undefined
          : {
              rps: median(refs.map((x) => x.rps)),
              p50: median(refs.map((x) => x.p50)),
              p99: median(refs.map((x) => x.p99)),
            }
        const same = runs.flatMap((x) => x.sameSql === undefined ? [] : [x.sameSql])
        const sameSql = same.length === 0 ? undefined : { rps: median(same.map((x) => x.rps)) }
        const tripCounts = runs.flatMap((x) => x.trips === undefined ? [] : [x.trips])
        const roundTrips = tripCounts.length === 0 ? undefined : median(tripCounts)
        const row = {
          scenario,
          connections: c,
          runs: repeat,
          rps: Math.round(http.rps),
          p50_ms: Number(http.p50.toFixed(2)),
          p99_ms: Number(http.p99.toFixed(2)),
          errors: http.errors,
          pgbench_tps: reference === undefined ? null : Math.round(reference.rps),
          pgbench_p50_ms: reference === undefined ? null : Number(reference.p50.toFixed(2)),
          pgbench_p99_ms: reference === undefined ? null : Number(reference.p99.toFixed(2)),
          pgbench_server_sql_tps: sameSql === undefined ? null : Math.round(sameSql.rps),
          rps_ratio: refs.length === 0 ? null : Number(median(refs.map((x) => x.http.rps / x.rps)).toFixed(2)),
          p99_ratio: refs.length === 0 ? null : Number(median(refs.map((x) => x.http.p99 / x.p99)).toFixed(2)),
          rps_ratio_runs: refs.map((x) => Number((x.http.rps / x.rps).toFixed(2))),
          server_peak_rss_mb: Math.round(peakKb / 1024),
          server_rss_during_mb: Math.round(duringKb / 1024),
          server_cpu_percent: Math.round(median(runs.map((x) => x.cpu))),
          round_trips_per_request: roundTrips === undefined || scenario === 'healthz'
            ? null
            : Number(roundTrips.toFixed(2)),
        }
        rows.push(row)
        say(JSON.stringify(row))
      }
    }
    // --soak N: N seconds of one scenario (--soak-scenario, GET /v1/invoices/:id by default) at the
    // first concurrency, the server's memory sampled every 15 s: its resident set must level off, not grow.
    const soakSeconds = Number(values.soak)
    if (soakSeconds > 0) {
      say(`soak: ${soakSeconds} s of ${soakScenario} at ${connections[0]!} connections`)
      const load = runLoad({
        url,
        scenario: soakScenario,
        connections: connections[0]!,
        seconds: soakSeconds,
        tenants,
        invoices,
      })
      const started = Date.now()
      while (Date.now() - started < soakSeconds * 1000 - 1000) {
        await new Promise((resolve) => setTimeout(resolve, 15_000))
        soak.push({
          at_s: Math.round((Date.now() - started) / 1000),
          rss_mb: Math.round((await processStats(server.pid)).rssKb / 1024),
        })
        say(`soak: ${JSON.stringify(soak.at(-1))}`)
      }
      soakResult = await load
    }
  } finally {
    await server.stop()
    await stopDatabase()
  }

  const fmt = (v: unknown): string => v === null || v === undefined ? '–' : String(v)
  const table = [
    `Dataset ${tenants} tenants × ${invoices} invoices; ${seconds} s per run, ${repeat} alternating runs of the ` +
      `server and each reference, medians shown; server: ${values.label}, ${values.workers} worker(s), ` +
      `pool ${values.pool}; load: ${WRK ?? 'autocannon'}.`,
    'Reference (pgbench, one round trip per statement): the naive transaction — BEGIN, set_config, key lookup, ' +
      'the route\'s SQL, COMMIT. Also shown: pgbench running the server\'s own statements one at a time.',
    '',
    '| scenario | conns | req/s | p50 ms | p99 ms | pgbench naive tps | naive p50 / p99 ms | req/s ÷ naive ' +
      '| p99 ÷ naive | pgbench, server SQL, tps | server RSS during (peak so far) | server CPU ' +
      '| DB round trips / req |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${String(r.scenario)} | ${fmt(r.connections)} | ${fmt(r.rps)} | ${fmt(r.p50_ms)} ` +
      `| ${fmt(r.p99_ms)} | ${fmt(r.pgbench_tps)} | ${fmt(r.pgbench_p50_ms)} / ${fmt(r.pgbench_p99_ms)} ` +
      `| ${fmt(r.rps_ratio)} | ${fmt(r.p99_ratio)} | ${fmt(r.pgbench_server_sql_tps)} ` +
      `| ${fmt(r.server_rss_during_mb)} (${fmt(r.server_peak_rss_mb)}) MB | ${fmt(r.server_cpu_percent)} % ` +
      `| ${fmt(r.round_trips_per_request)} |`),
    ...(soak.length === 0
      ? []
      : ['', `Soak: ${values.soak} s of ${soakScenario} at ${connections[0]!} connections, ` +
        `${Math.round(soakResult?.rps ?? 0)} req/s; ` +
        `server RSS (MB) every 15 s: ${soak.map((x) => x.rss_mb).join(', ')}.`]),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const result = {
    tenants,
    invoices,
    seconds,
    repeat,
    workers: values.workers,
    pool: values.pool,
    rows,
    ...(soak.length > 0 && { soak, soak_scenario: soakScenario, soak_rps: soakResult?.rps }),
  }
  await writeFile(`bench/results/bench-${values.label}-${stamp}.json`, JSON.stringify(result, null, 2) + '\n')
  await writeFile(`bench/results/bench-${values.label}-${stamp}.md`, table)
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
