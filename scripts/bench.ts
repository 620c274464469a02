// npm run bench -- [--tenants 100] [--invoices 2000] [--seconds 10] [--repeat 3] [--soak 0] [--soak-scenario get-invoice] [--connections 16,64]
//                  [--scenarios healthz,get-invoice,list-invoices,create-invoice,forged-key-huge-body] [--workers 1]
//                  [--pool 10] [--server-dir .] [--label name] [--growth 1000x10000]
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
// T tenants × I invoices (see measureGrowth).
// Database: BENCH_DATABASE_URL (a superuser), else an embedded PostgreSQL kept under .data/bench.
// `--server-dir` runs another checkout's server against the same data (before/after comparisons).
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { bootstrapDatabase, withDatabase } from '../src/ops/bootstrap.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'
import { loadTenantTables } from '../src/db/tenant-scope.ts'
import { benchKey, FORGED_KEY, HUGE_LINES, LINE, pgbenchScripts, seed, tenantsByShard, type PgbenchScript, type Scenario } from './lib/bench-data.ts'

const say = (line: string): void => { process.stderr.write(`bench: ${line}\n`) }

interface Measure { rps: number, p50: number, p99: number, requests?: number, errors?: number }

function quantile (sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}

function findPgbench (): string | undefined {
  for (const candidate of [process.env.PGBENCH, 'pgbench', '/usr/lib/postgresql/15/bin/pgbench']) {
    if (candidate === undefined) continue
    const probe = spawnSync(candidate, ['--version'], { encoding: 'utf8' })
    if (probe.status === 0) return candidate
  }
  return undefined
}

async function runPgbench (bin: string, appUrl: string, scripts: PgbenchScript[], clients: number, seconds: number, protocol: 'extended' | 'prepared' = 'extended'): Promise<Measure> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-pgbench-'))
  try {
    const files: string[] = []
    for (const [i, script] of scripts.entries()) {
      await writeFile(path.join(dir, `script${i}.sql`), script.sql)
      files.push('-f', `${path.join(dir, `script${i}.sql`)}@${script.weight}`)
    }
    const url = new URL(appUrl)
    const result = spawnSync(bin, ['-n', '-M', protocol, '-c', String(clients), '-j', '2', '-T', String(seconds),
      '-l', '--log-prefix', path.join(dir, 'log'), ...files, decodeURIComponent(url.pathname.slice(1))], {
      encoding: 'utf8',
      env: { ...process.env, PGHOST: url.searchParams.get('host') ?? url.hostname, PGPORT: url.port || '5432', PGUSER: decodeURIComponent(url.username), PGPASSWORD: decodeURIComponent(url.password) },
    })
    if (result.status !== 0) throw new Error(`pgbench failed: ${result.stderr}`)
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(result.stdout)?.[1])
    const failed = Number(/number of failed transactions: (\d+)/.exec(result.stdout)?.[1] ?? 0)
    const latencies: number[] = []
    for (const file of await readdir(dir)) {
      if (!file.startsWith('log')) continue
      for (const line of (await readFile(path.join(dir, file), 'utf8')).split('\n')) {
        const micros = Number(line.split(' ')[2])
        if (Number.isFinite(micros) && line !== '') latencies.push(micros / 1000)
      }
    }
    latencies.sort((a, b) => a - b)
    return { rps: tps, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99), requests: latencies.length, errors: failed }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

const WRK = spawnSync('wrk', ['--version'], { encoding: 'utf8' }).error === undefined ? 'wrk' : undefined

/** The wrk Lua script for a scenario: the same rotation as scripts/bench-load.ts (autocannon). */
function wrkScript (scenario: Scenario, tenants: number, invoices: number): string {
  const keys = Array.from({ length: tenants }, (_, i) => `"Bearer ${benchKey(i + 1).key}"`).join(',\n')
  const line = JSON.stringify(LINE)
  const request: Record<Scenario, string> = {
    healthz: 'return wrk.format("GET", "/healthz")',
    'get-invoice': 'return wrk.format("GET", string.format("/v1/invoices/%08x-0000-7000-b000-%012x", t, math.random(invoices)), { ["authorization"] = keys[t] })',
    'list-invoices': 'return wrk.format("GET", "/v1/invoices?limit=50", { ["authorization"] = keys[t] })',
    'create-invoice': `return wrk.format("POST", "/v1/invoices", { ["authorization"] = keys[t], ["content-type"] = "application/json" },
      string.format('{"customer_id":"%08x-0000-7000-a000-000000000000","currency":"EUR","lines":[${line},${line},${line}]}', t))`,
    'forged-key-huge-body': `return wrk.format("POST", "/v1/invoices",
      { ["authorization"] = "Bearer ${FORGED_KEY.key}", ["content-type"] = "application/json" }, huge)`,
  }
  const huge = scenario === 'forged-key-huge-body'
    ? `'{"customer_id":"00000001-0000-7000-a000-000000000000","currency":"EUR","lines":[' .. string.rep('{},', ${HUGE_LINES - 1}) .. '{}]}'`
    : "''"
  return `local keys = {\n${keys}\n}
local huge = ${huge}
local tenants, invoices = ${tenants}, ${invoices}
setup = function(thread) thread:set("seed", math.random(1, 1e9)) end
init = function() math.randomseed(seed or os.time()) end
request = function()
  local t = math.random(tenants)
  ${request[scenario]}
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
`
}

async function runWrk (job: { url: string, scenario: Scenario, connections: number, seconds: number, tenants: number, invoices: number }): Promise<Measure> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-wrk-'))
  try {
    const script = path.join(dir, 'load.lua')
    await writeFile(script, wrkScript(job.scenario, job.tenants, job.invoices))
    const child = spawn('wrk', ['-t', '1', '-c', String(job.connections), '-d', `${job.seconds}s`, '-s', script, job.url], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    const match = /RESULT (\{.*\})/.exec(out)
    if (code !== 0 || match === null) throw new Error(`wrk failed: ${out}`)
    const r = JSON.parse(match[1]!) as { requests: number, duration_us: number, p50_us: number, p99_us: number, errors: number, non2xx: number }
    return { rps: r.requests / (r.duration_us / 1e6), p50: r.p50_us / 1000, p99: r.p99_us / 1000, requests: r.requests, errors: r.errors + r.non2xx }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function runLoad (job: { url: string, scenario: Scenario, connections: number, seconds: number, tenants: number, invoices: number }): Promise<Measure> {
  if (WRK !== undefined) return runWrk(job)
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/bench-load.ts', JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  if (code !== 0) throw new Error('the load generator failed')
  const r = JSON.parse(out) as { rps: number, p50: number, p99: number, requests: number, errors: number, non2xx: number }
  return { rps: r.rps, p50: r.p50, p99: r.p99, requests: r.requests, errors: r.errors + r.non2xx }
}

/** Peak RSS (kB) and CPU time (clock ticks) of a process and its children on this machine. */
async function processStats (pid: number): Promise<{ hwmKb: number, rssKb: number, cpuTicks: number }> {
  const pids = [pid]
  try {
    const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim()
    if (children !== '') pids.push(...children.split(/\s+/).map(Number))
  } catch {}
  let hwmKb = 0
  let rssKb = 0
  let cpuTicks = 0
  for (const p of pids) {
    try {
      const status = await readFile(`/proc/${p}/status`, 'utf8')
      hwmKb = Math.max(hwmKb, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0))
      rssKb = Math.max(rssKb, Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0))
      const fields = (await readFile(`/proc/${p}/stat`, 'utf8')).split(') ')[1]!.split(' ')
      cpuTicks += Number(fields[11]) + Number(fields[12])
    } catch {}
  }
  return { hwmKb, rssKb, cpuTicks }
}

/** The server's METRICS_TOKEN (a server from before it existed serves /metrics to anyone, header or not). */
const METRICS_TOKEN = randomBytes(32).toString('base64url')

async function scrapeRoundTrips (url: string): Promise<number | undefined> {
  try {
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text()
    const match = /^rowfence_db_round_trips_total (\d+)/m.exec(text)
    return match === null ? undefined : Number(match[1])
  } catch {
    return undefined
  }
}

interface Dataset { tenants: number, invoices: number, database: string, urls: Awaited<ReturnType<typeof bootstrapDatabase>>, tables: Awaited<ReturnType<typeof loadTenantTables>>, shards: Map<number, number[]> }

/** The benchmark database of a size: created, migrated and seeded (reusing what earlier runs seeded). */
async function prepareDataset (adminUrl: string, tenants: number, invoices: number): Promise<Dataset> {
  const database = `rowfence_bench_${tenants}x${invoices}`
  const urls = await bootstrapDatabase({ adminUrl, database, ownerPassword: 'bench-owner', appPassword: 'bench-app' })
  await migrate(urls.ownerUrl)
  say(`seeding ${tenants} tenants × ${invoices} invoices (3 lines each) in ${database}, reusing earlier runs' data`)
  await seed(withDatabase(adminUrl, database), tenants, invoices, say)
  const probe = new pg.Pool({ connectionString: urls.appUrl, max: 1 })
  const tables = await loadTenantTables(probe)
  await probe.end()
  return { tenants, invoices, database, urls, tables, shards: await tenantsByShard(urls.ownerUrl, tenants) }
}

interface RunningServer { url: string, pid: number, stop: () => Promise<void> }

/** The server of `serverDir`, started exactly as `npm start` starts it (its node flags included), in production mode. */
async function startServer (serverDir: string, urls: Dataset['urls'], options: { workers: string, pool: string, profile: boolean }): Promise<RunningServer> {
  // --profile: a V8 CPU profile of the server per process, in bench/profiles (open in Chrome DevTools).
  const profiling = options.profile ? ['--cpu-prof', '--cpu-prof-dir', path.resolve('bench/profiles')] : []
  const start = (JSON.parse(await readFile(path.join(serverDir, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start.split(/\s+/)
  const serverArgs = start[0] === 'node' ? start.slice(1) : ['--import', 'tsx', 'src/server.ts']
  const server = spawn(process.execPath, [...profiling, ...serverArgs], {
    cwd: serverDir,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      NODE_ENV: 'production',
      LOG_LEVEL: 'warn',
      HOST: '127.0.0.1',
      PORT: '0',
      DATABASE_URL: urls.ownerUrl,
      APP_DATABASE_URL: urls.appUrl,
      ADMIN_TOKEN: randomBytes(32).toString('base64url'),
      METRICS_TOKEN,
      WEB_CONCURRENCY: options.workers,
      DB_POOL_MAX: options.pool,
      KEY_USAGE_FLUSH_MS: '15000',
    },
    stdio: ['ignore', 'inherit', 'pipe'],
  })
  let serverErr = ''
  server.stderr.on('data', (chunk: Buffer) => { serverErr += chunk.toString() })
  const deadline = Date.now() + 60_000
  let url: string | undefined
  while (url === undefined) {
    url = /listening on (http:\/\/\S+)/.exec(serverErr)?.[1]
    if (url === undefined && (Date.now() > deadline || server.exitCode !== null)) {
      server.kill('SIGKILL')
      throw new Error(`the server did not start: ${serverErr}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    url,
    pid: server.pid!,
    stop: async () => {
      if (server.exitCode !== null || server.signalCode !== null) return
      const exited = new Promise((resolve) => server.once('exit', resolve))
      server.kill('SIGTERM')
      await exited
    },
  }
}

const median = (xs: number[]): number => { const v = [...xs].sort((x, y) => x - y); return v.length === 0 ? NaN : v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2 }

/**
 * --growth TxI: how the latency of one read (GET /v1/invoices/:id) grows from the base dataset to a
 * larger one. One server per dataset; the two take turns `repeat` times at each concurrency (a
 * warm-up before every run, as each evicts the other's pages), and each turn is followed by pgbench
 * running the server's own statements on the same dataset: the database's own growth for that SQL.
 * The ratios are medians of the turns' own ratios (large ÷ base), the machine being noisy.
 */
async function measureGrowth (job: { pgbench: string | undefined, base: Dataset, large: Dataset, servers: [RunningServer, RunningServer], connections: number[], seconds: number, repeat: number }): Promise<Array<Record<string, unknown>>> {
  const rows: Array<Record<string, unknown>> = []
  const datasets = [job.base, job.large] as const
  // The server's statements on each dataset, captured once (they depend on its shards, not on the turn).
  const serverSql = await Promise.all(datasets.map(async (d) => pgbenchScripts('get-invoice', 'server', d.tables, d.tenants, d.invoices, d.shards)))
  for (const c of job.connections) {
    const turns: Array<Array<{ http: Measure, sameSql?: Measure }>> = [[], []]
    for (let r = 0; r < job.repeat; r++) {
      for (const [i, data] of datasets.entries()) {
        const load = { url: job.servers[i]!.url, scenario: 'get-invoice' as const, connections: c, seconds: job.seconds, tenants: data.tenants, invoices: data.invoices }
        await runLoad({ ...load, seconds: 2 }) // warm-up
        const http = await runLoad(load)
        const sameSql = job.pgbench === undefined
          ? undefined
          : await runPgbench(job.pgbench, data.urls.appUrl, serverSql[i]!, c, job.seconds)
        turns[i]!.push({ http, ...(sameSql !== undefined && { sameSql }) })
        say(`growth: ${data.tenants}x${data.invoices} at ${c} connections, turn ${r + 1}: ${Math.round(http.rps)} req/s, p50 ${http.p50.toFixed(2)} ms`)
      }
    }
    const [base, large] = turns as [typeof turns[0], typeof turns[0]]
    const ratio = (pick: (m: { http: Measure, sameSql?: Measure }) => number | undefined): number | null => {
      const xs = base.flatMap((b, r) => { const x = pick(large[r]!); const y = pick(b); return x === undefined || y === undefined ? [] : [x / y] })
      return xs.length === 0 ? null : Number(median(xs).toFixed(2))
    }
    rows.push({
      connections: c,
      runs: job.repeat,
      base_p50_ms: Number(median(base.map((m) => m.http.p50)).toFixed(2)),
      large_p50_ms: Number(median(large.map((m) => m.http.p50)).toFixed(2)),
      p50_growth: ratio((m) => m.http.p50),
      p50_growth_turns: base.map((b, r) => Number((large[r]!.http.p50 / b.http.p50).toFixed(2))),
      p99_growth: ratio((m) => m.http.p99),
      rps_base: Math.round(median(base.map((m) => m.http.rps))),
      rps_large: Math.round(median(large.map((m) => m.http.rps))),
      server_sql_p50_growth: ratio((m) => m.sameSql?.p50),
      errors: [...base, ...large].reduce((n, m) => n + (m.http.errors ?? 0), 0),
    })
  }
  return rows
}

/** The growth table (stdout, bench/results/growth-*.md and .json), with the database's memory and the datasets' sizes. */
async function writeGrowth (rows: Array<Record<string, unknown>>, job: { base: Dataset, large: Dataset, seconds: number, repeat: number, label: string, workers: string, pool: string }): Promise<void> {
  const client = new pg.Client({ connectionString: job.large.urls.ownerUrl })
  await client.connect()
  const { rows: [db] } = await client.query<{ shared_buffers: string, base: string, large: string }>(
    "SELECT current_setting('shared_buffers') AS shared_buffers, pg_size_pretty(pg_database_size($1)) AS base, pg_size_pretty(pg_database_size(current_database())) AS large",
    [job.base.database])
  await client.end()
  const name = (d: Dataset): string => `${d.tenants} × ${d.invoices}`
  const fmt = (v: unknown): string => v === null || v === undefined ? '–' : Array.isArray(v) ? v.join(', ') : String(v)
  const table = [
    `GET /v1/invoices/:id as the data grows from ${name(job.base)} (${db!.base}) to ${name(job.large)} (${db!.large}) invoices; PostgreSQL shared_buffers ${db!.shared_buffers}; ` +
      `${job.seconds} s per run, the two datasets' servers taking turns ${job.repeat} times; server: ${job.label}, ${job.workers} worker(s), pool ${job.pool}; load: ${WRK ?? 'autocannon'}.`,
    'Growth = large ÷ base, the median of the turns\' own ratios; "server SQL" is pgbench running the server\'s statements on each dataset right after its turn (the database\'s own growth).',
    '',
    '| conns | p50 base / large ms (medians of the turns) | **p50 growth** (median of the turns\' ratios) | p50 growth per turn | p99 growth | req/s base / large | server SQL p50 growth | errors |',
    '|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${fmt(r.connections)} | ${fmt(r.base_p50_ms)} / ${fmt(r.large_p50_ms)} | **${fmt(r.p50_growth)}** | ${fmt(r.p50_growth_turns)} | ${fmt(r.p99_growth)} | ${fmt(r.rps_base)} / ${fmt(r.rps_large)} | ${fmt(r.server_sql_p50_growth)} | ${fmt(r.errors)} |`),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const sizes = { base: { tenants: job.base.tenants, invoices: job.base.invoices, size: db!.base }, large: { tenants: job.large.tenants, invoices: job.large.invoices, size: db!.large } }
  await writeFile(`bench/results/growth-${job.label}-${stamp}.json`, JSON.stringify({ ...sizes, shared_buffers: db!.shared_buffers, seconds: job.seconds, repeat: job.repeat, workers: job.workers, pool: job.pool, rows }, null, 2) + '\n')
  await writeFile(`bench/results/growth-${job.label}-${stamp}.md`, table)
}

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
    },
  })
  const tenants = Number(values.tenants)
  const invoices = Number(values.invoices)
  const seconds = Number(values.seconds)
  const connections = values.connections.split(',').map(Number)
  const scenarios = values.scenarios.split(',') as Scenario[]
  const serverDir = path.resolve(values['server-dir'])
  const repeat = Math.max(1, Number(values.repeat))
  const soakScenario = values['soak-scenario'] as Scenario
  if (!['healthz', 'get-invoice', 'list-invoices', 'create-invoice'].includes(soakScenario)) throw new Error(`--soak-scenario: unknown scenario ${soakScenario}`)

  const growth = values.growth === undefined ? undefined : /^(\d+)x(\d+)$/.exec(values.growth)
  if (growth === null) throw new Error(`--growth: expected TENANTSxINVOICES (e.g. 1000x10000), got ${values.growth}`)

  const pgbench = findPgbench()
  if (pgbench === undefined) say('pgbench is MISSING (install PostgreSQL client tools, e.g. Debian postgresql-client): the server is measured without its reference')

  let adminUrl = process.env.BENCH_DATABASE_URL
  let stopDatabase = async (): Promise<void> => {}
  if (adminUrl === undefined) {
    const embedded = await startEmbedded({ dataDir: '.data/bench', port: Number(process.env.BENCH_PG_PORT ?? 54339), database: 'rowfence_unused' })
    adminUrl = embedded.adminUrl
    stopDatabase = embedded.stop
    say('using the embedded PostgreSQL under .data/bench (BENCH_DATABASE_URL to use another server)')
  }
  // Nothing below may leave an embedded database running when it fails.
  const data = await prepareDataset(adminUrl, tenants, invoices).catch(async (error: unknown) => { await stopDatabase(); throw error })
  const { urls, tables, shards } = data
  if (growth !== undefined) {
    const servers: RunningServer[] = []
    try {
      const large = await prepareDataset(adminUrl, Number(growth[1]), Number(growth[2]))
      servers.push(await startServer(serverDir, urls, { workers: values.workers, pool: values.pool, profile: false }))
      servers.push(await startServer(serverDir, large.urls, { workers: values.workers, pool: values.pool, profile: false }))
      const rows = await measureGrowth({ pgbench, base: data, large, servers: servers as [RunningServer, RunningServer], connections, seconds, repeat })
      await writeGrowth(rows, { base: data, large, seconds, repeat, label: values.label, workers: values.workers, pool: values.pool })
    } finally {
      for (const server of servers) await server.stop()
      await stopDatabase()
    }
    return
  }

  const server = await startServer(serverDir, urls, { workers: values.workers, pool: values.pool, profile: values.profile })
    .catch(async (error: unknown) => { await stopDatabase(); throw error })
  const url = server.url
  say(`server (${values.label}, ${values.workers} worker(s), pool ${values.pool}) at ${url}; load from ${WRK ?? 'autocannon (install wrk for a lighter load generator)'}`)

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
        const naiveScripts = measurable ? await pgbenchScripts(sqlScenario, 'naive', tables, tenants, invoices, shards) : []
        const serverScripts = measurable ? await pgbenchScripts(sqlScenario, 'server', tables, tenants, invoices, shards) : []
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
          const trips = values.workers === '1' && tripsBefore !== undefined && tripsAfter !== undefined && http.requests !== undefined && http.requests > 0
            ? (tripsAfter - tripsBefore - 1) / http.requests // the scrape itself is not a round trip; only requests count
            : undefined
          const reference = measurable ? await runPgbench(pgbench, urls.appUrl, naiveScripts, c, seconds) : undefined
          const sameSql = measurable ? await runPgbench(pgbench, urls.appUrl, serverScripts, c, seconds) : undefined
          runs.push({ http, ...(reference !== undefined && { reference }), ...(sameSql !== undefined && { sameSql }), cpu: ((after.cpuTicks - before.cpuTicks) / 100) / elapsed * 100, ...(trips !== undefined && { trips }) })
        }

        const http = { rps: median(runs.map((x) => x.http.rps)), p50: median(runs.map((x) => x.http.p50)), p99: median(runs.map((x) => x.http.p99)), errors: runs.reduce((n, x) => n + (x.http.errors ?? 0), 0) }
        const refs = runs.flatMap((x) => x.reference === undefined ? [] : [{ ...x.reference, http: x.http }])
        const reference = refs.length === 0 ? undefined : { rps: median(refs.map((x) => x.rps)), p50: median(refs.map((x) => x.p50)), p99: median(refs.map((x) => x.p99)) }
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
          round_trips_per_request: roundTrips === undefined || scenario === 'healthz' ? null : Number(roundTrips.toFixed(2)),
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
      const load = runLoad({ url, scenario: soakScenario, connections: connections[0]!, seconds: soakSeconds, tenants, invoices })
      const started = Date.now()
      while (Date.now() - started < soakSeconds * 1000 - 1000) {
        await new Promise((resolve) => setTimeout(resolve, 15_000))
        soak.push({ at_s: Math.round((Date.now() - started) / 1000), rss_mb: Math.round((await processStats(server.pid)).rssKb / 1024) })
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
    `Dataset ${tenants} tenants × ${invoices} invoices; ${seconds} s per run, ${repeat} alternating runs of the server and each reference, medians shown; server: ${values.label}, ${values.workers} worker(s), pool ${values.pool}; load: ${WRK ?? 'autocannon'}.`,
    'Reference (pgbench, one round trip per statement): the naive transaction — BEGIN, set_config, key lookup, the route\'s SQL, COMMIT. Also shown: pgbench running the server\'s own statements one at a time.',
    '',
    '| scenario | conns | req/s | p50 ms | p99 ms | pgbench naive tps | naive p50 / p99 ms | req/s ÷ naive | p99 ÷ naive | pgbench, server SQL, tps | server RSS during (peak so far) | server CPU | DB round trips / req |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${String(r.scenario)} | ${fmt(r.connections)} | ${fmt(r.rps)} | ${fmt(r.p50_ms)} | ${fmt(r.p99_ms)} | ${fmt(r.pgbench_tps)} | ${fmt(r.pgbench_p50_ms)} / ${fmt(r.pgbench_p99_ms)} | ${fmt(r.rps_ratio)} | ${fmt(r.p99_ratio)} | ${fmt(r.pgbench_server_sql_tps)} | ${fmt(r.server_rss_during_mb)} (${fmt(r.server_peak_rss_mb)}) MB | ${fmt(r.server_cpu_percent)} % | ${fmt(r.round_trips_per_request)} |`),
    ...(soak.length === 0
      ? []
      : ['', `Soak: ${values.soak} s of ${soakScenario} at ${connections[0]!} connections, ${Math.round(soakResult?.rps ?? 0)} req/s; server RSS (MB) every 15 s: ${soak.map((x) => x.rss_mb).join(', ')}.`]),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  await writeFile(`bench/results/bench-${values.label}-${stamp}.json`, JSON.stringify({ tenants, invoices, seconds, repeat, workers: values.workers, pool: values.pool, rows, ...(soak.length > 0 && { soak, soak_scenario: soakScenario, soak_rps: soakResult?.rps }) }, null, 2) + '\n')
  await writeFile(`bench/results/bench-${values.label}-${stamp}.md`, table)
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
