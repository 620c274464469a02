// The cost of limits and metering (`npm run bench -- --scenarios limits-cost --before-dir DIR`): the same
// requests against three servers in one run, taking turns: BEFORE, a checkout from before limits existed
// (--before-dir, e.g. a git worktree of c9c2c27 with this checkout's node_modules linked in), AFTER, the
// --server-dir checkout with its default limits and the in-process rate-limit store, and AFTER+Redis, the
// same counting in Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379). Each server has a database of its
// own, migrated with its own checkout's sql/ and seeded alike. The load spreads over the dataset's tenants at
// random, under each tenant's default rate and share: every request is counted, none should be refused (the
// refusals are scraped to show it). After each HTTP turn of BEFORE and of AFTER, pgbench runs the statements
// that checkout's server sends (its own binding, the route's SQL, COMMIT) on its database: the database's
// share of the difference.
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Scenario } from './bench-data.ts'
import { findPgbench, median, processStats, runLoad, runPgbench, say, WRK, type Measure } from './bench-runners.ts'
import {
  prepareDataset, scrapeRefusals, scrapeRoundTrips, startServer, type Dataset, type RunningServer,
} from './bench-server.ts'
import { pgbenchScripts, type PgbenchScript } from './bench-sql.ts'

export interface LimitsCostOptions {
  adminUrl: string
  /** The checkout from before limits and metering (its own server, migrations and package.json). */
  beforeDir: string
  /** The checkout with limits and metering (--server-dir). */
  afterDir: string
  tenants: number
  invoices: number
  seconds: number
  repeat: number
  connections: number
  workers: string
  pool: string
  label: string
  profile: boolean
}

const SCENARIOS = ['get-invoice', 'list-invoices', 'create-invoice'] as const satisfies Scenario[]
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'

interface Turn { http: Measure, cpu: number, trips: number | undefined, refused: number, database?: Measure }

/** A checkout's binding statement (src/db/tenant-transaction.ts), for pgbench to send as its server does. */
async function bindSqlOf (dir: string): Promise<string> {
  const url = pathToFileURL(path.join(dir, 'src/db/tenant-transaction.ts')).href
  return (await import(url) as { BIND_WITH_TIMEOUTS_SQL: string }).BIND_WITH_TIMEOUTS_SQL
}

/** One turn of a server: the load, its CPU (% of one core), DB round trips per request, limit refusals. */
async function turn (server: RunningServer, job: Parameters<typeof runLoad>[0]): Promise<Turn> {
  await runLoad({ ...job, seconds: 2 }) // warm-up: the other servers' turns evicted this database's pages
  const refusalsBefore = await scrapeRefusals(server.url)
  const tripsBefore = await scrapeRoundTrips(server.url)
  const before = await processStats(server.pid)
  const started = performance.now()
  const http = await runLoad(job)
  const elapsed = (performance.now() - started) / 1000
  const after = await processStats(server.pid)
  const tripsAfter = await scrapeRoundTrips(server.url)
  const refusalsAfter = await scrapeRefusals(server.url)
  const refused = Object.entries(refusalsAfter).reduce((n, [reason, v]) => n + v - (refusalsBefore[reason] ?? 0), 0)
  const trips = tripsBefore !== undefined && tripsAfter !== undefined && (http.requests ?? 0) > 0
    ? (tripsAfter - tripsBefore - 1) / http.requests! // the scrape itself is not a round trip
    : undefined
  return { http, cpu: ((after.cpuTicks - before.cpuTicks) / 100) / elapsed * 100, trips, refused }
}

export async function measureLimitsCost (options: LimitsCostOptions): Promise<void> {
  const { tenants, invoices, seconds, repeat, connections } = options
  // AFTER+Redis runs the same database code as AFTER: pgbench runs on BEFORE's and AFTER's databases only.
  const servers: Array<{ name: string, dir: string, env: Record<string, string>, database: boolean }> = [
    { name: 'before', dir: options.beforeDir, env: {}, database: true },
    { name: 'after', dir: options.afterDir, env: {}, database: true },
    { name: 'after+redis', dir: options.afterDir, env: { REDIS_URL }, database: false },
  ]
  const pgbench = findPgbench()
  const running: RunningServer[] = []
  const datasets: Dataset[] = []
  const turns = new Map<string, Turn[]>()
  try {
    for (const s of servers) {
      const data = await prepareDataset(options.adminUrl, tenants, invoices, {
        suffix: `_${s.name.replace('+', '_')}`, sqlDir: path.join(s.dir, 'sql'),
      })
      datasets.push(data)
      running.push(await startServer(s.dir, data.urls, {
        workers: options.workers, pool: options.pool, profile: options.profile, env: s.env,
      }))
      const { url, pid } = running.at(-1)!
      say(`limits-cost: ${s.name} (${s.dir}) at ${url}, pid ${pid}, on ${data.database}`)
    }
    for (const scenario of SCENARIOS) {
      const scripts: Array<PgbenchScript[] | undefined> = []
      for (const [i, s] of servers.entries()) {
        const d = datasets[i]!
        scripts.push(pgbench === undefined || !s.database
          ? undefined
          : await pgbenchScripts(scenario, 'server', d.tables, tenants, invoices, d.shards, await bindSqlOf(s.dir)))
      }
      for (let r = 0; r < repeat; r++) {
        // The order turns with each round, so that no server always follows the same one.
        for (let k = 0; k < servers.length; k++) {
          const i = (k + r) % servers.length
          const job = { url: running[i]!.url, scenario, connections, seconds, tenants, invoices }
          const t = await turn(running[i]!, job)
          if (scripts[i] !== undefined) {
            t.database = await runPgbench(pgbench!, datasets[i]!.urls.appUrl, scripts[i]!, connections, seconds)
          }
          const key = `${scenario}/${servers[i]!.name}`
          turns.set(key, [...(turns.get(key) ?? []), t])
          say(`limits-cost: ${scenario} ${servers[i]!.name} round ${r + 1}: ${Math.round(t.http.rps)} req/s, ` +
            `p50 ${t.http.p50} ms, p99 ${t.http.p99} ms, non-2xx ${t.http.errors ?? 0}, refused ${t.refused}`)
        }
      }
    }
  } finally {
    for (const server of running) await server.stop()
  }

  const rows: Array<Record<string, unknown>> = []
  for (const scenario of SCENARIOS) {
    const base = turns.get(`${scenario}/before`)!
    for (const s of servers) {
      const runs = turns.get(`${scenario}/${s.name}`)!
      // A ratio is the median of the rounds' own ratios (each round's turns are minutes apart at most).
      const ratio = (pick: (m: Measure) => number): number =>
        Number(median(runs.map((t, r) => pick(t.http) / pick(base[r]!.http))).toFixed(2))
      const trips = runs.flatMap((t) => t.trips === undefined ? [] : [t.trips])
      const database = runs.flatMap((t, r) => t.database === undefined || base[r]!.database === undefined
        ? []
        : [{ tps: t.database.rps, ratio: t.database.rps / base[r]!.database!.rps }])
      rows.push({
        scenario,
        server: s.name,
        runs: repeat,
        rps: Math.round(median(runs.map((t) => t.http.rps))),
        p50_ms: Number(median(runs.map((t) => t.http.p50)).toFixed(2)),
        p99_ms: Number(median(runs.map((t) => t.http.p99)).toFixed(2)),
        rps_ratio: ratio((m) => m.rps),
        p50_ratio: ratio((m) => m.p50),
        p99_ratio: ratio((m) => m.p99),
        rps_ratio_runs: runs.map((t, r) => Number((t.http.rps / base[r]!.http.rps).toFixed(2))),
        rps_runs: runs.map((t) => Math.round(t.http.rps)),
        server_cpu_percent: Math.round(median(runs.map((t) => t.cpu))),
        round_trips_per_request: trips.length === 0 ? null : Number(median(trips).toFixed(2)),
        non2xx: runs.reduce((n, t) => n + (t.http.errors ?? 0), 0),
        refused: runs.reduce((n, t) => n + t.refused, 0),
        pgbench_server_sql_tps: database.length === 0 ? null : Math.round(median(database.map((x) => x.tps))),
        pgbench_ratio: database.length === 0 ? null : Number(median(database.map((x) => x.ratio)).toFixed(2)),
      })
    }
  }

  const table = [
    `Limits and metering, before ÷ after: ${tenants} tenants × ${invoices} invoices per server (a database each), ` +
      `${connections} connections over all tenants at random, ${seconds} s per turn after a 2 s warm-up, ` +
      `${repeat} rounds of the three servers in turning order, medians (a ratio: the median of the rounds' own); ` +
      `pool ${options.pool}, ${options.workers} worker(s); load: ${WRK ?? 'autocannon'}. pgbench: the statements ` +
      `each checkout's server sends (its binding, the route's SQL, COMMIT), one round trip each, ${connections} ` +
      'clients, on its database (AFTER+Redis has the same).',
    '',
    '| scenario | server | req/s | p50 ms | p99 ms | req/s ÷ before | p50 ÷ before | p99 ÷ before ' +
      '| req/s ÷ before per round | server CPU | DB round trips / req | non-2xx | refused | pgbench tps ' +
      '| pgbench ÷ before |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${String(r.scenario)} | ${String(r.server)} | ${String(r.rps)} | ${String(r.p50_ms)} ` +
      `| ${String(r.p99_ms)} | ${String(r.rps_ratio)} | ${String(r.p50_ratio)} | ${String(r.p99_ratio)} ` +
      `| ${(r.rps_ratio_runs as number[]).join(', ')} | ${String(r.server_cpu_percent)} % ` +
      `| ${String(r.round_trips_per_request ?? '–')} | ${String(r.non2xx)} | ${String(r.refused)} ` +
      `| ${String(r.pgbench_server_sql_tps ?? '–')} | ${String(r.pgbench_ratio ?? '–')} |`),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const file = `bench/results/limits-cost-${options.label}-${stamp}`
  await writeFile(`${file}.json`, JSON.stringify({
    ...options, adminUrl: undefined, redisUrl: REDIS_URL, servers, rows,
  }, null, 2) + '\n')
  await writeFile(`${file}.md`, table)
  say(`limits-cost: written to ${file}.md`)
}
