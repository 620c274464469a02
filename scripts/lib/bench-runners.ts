// The measurements of `npm run bench` (scripts/bench.ts): the HTTP load (wrk, else autocannon in a
// process of its own, scripts/bench-load.ts), pgbench as the database's own reference, and the
// server's resident set and CPU time read from /proc.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { benchKey, FORGED_KEY, HUGE_LINES, LINE, type Scenario } from './bench-data.ts'
import type { PgbenchScript } from './bench-sql.ts'

export const say = (line: string): void => { process.stderr.write(`bench: ${line}\n`) }

export interface Measure {
  rps: number,
  p50: number,
  p99: number,
  requests?: number,
  errors?: number,
  /** Responses by HTTP status (autocannon only). */
  statuses?: Record<string, number>,
}

/** One run of the HTTP load: a scenario at a concurrency, rotating across tenants and invoices. */
export interface LoadJob {
  url: string,
  scenario: Scenario,
  connections: number,
  seconds: number,
  tenants: number,
  invoices: number,
  /** One tenant (1..tenants) instead of a random one per request (autocannon only). */
  tenant?: number,
  /** Requests per second over all connections, paced, instead of as fast as they answer (autocannon only). */
  rate?: number,
}

/** The q-quantile of values sorted ascending. */
export function quantile (sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}

export const median = (xs: number[]): number => {
  const v = [...xs].sort((x, y) => x - y)
  return v.length === 0
    ? NaN
    : v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2
}

export function findPgbench (): string | undefined {
  for (const candidate of [process.env.PGBENCH, 'pgbench', '/usr/lib/postgresql/15/bin/pgbench']) {
    if (candidate === undefined) continue
    const probe = spawnSync(candidate, ['--version'], { encoding: 'utf8' })
    if (probe.status === 0) return candidate
  }
  return undefined
}

export async function runPgbench (
  bin: string,
  appUrl: string,
  scripts: PgbenchScript[],
  clients: number,
  seconds: number,
  protocol: 'extended' | 'prepared' = 'extended'
): Promise<Measure> {
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
      env: {
        ...process.env,
        PGHOST: url.searchParams.get('host') ?? url.hostname,
        PGPORT: url.port || '5432',
        PGUSER: decodeURIComponent(url.username),
        PGPASSWORD: decodeURIComponent(url.password),
      },
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
    return {
      rps: tps,
      p50: quantile(latencies, 0.5),
      p99: quantile(latencies, 0.99),
      requests: latencies.length,
      errors: failed,
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export const WRK = spawnSync('wrk', ['--version'], { encoding: 'utf8' }).error === undefined ? 'wrk' : undefined

/** The wrk Lua script for a scenario: the same rotation as scripts/bench-load.ts (autocannon). */
function wrkScript (scenario: Scenario, tenants: number, invoices: number): string {
  const keys = Array.from({ length: tenants }, (_, i) => `"Bearer ${benchKey(i + 1).key}"`).join(',\n')
  const line = JSON.stringify(LINE)
  const request: Record<Scenario, string> = {
    healthz: 'return wrk.format("GET", "/healthz")',
    'get-invoice': 'return wrk.format("GET", ' +
      'string.format("/v1/invoices/%08x-0000-7000-b000-%012x", t, math.random(invoices)), ' +
      '{ ["authorization"] = keys[t] })',
    'list-invoices': 'return wrk.format("GET", "/v1/invoices?limit=50", { ["authorization"] = keys[t] })',
    'create-invoice': 'return wrk.format("POST", "/v1/invoices", ' +
      '{ ["authorization"] = keys[t], ["content-type"] = "application/json" },\n' +
      '      string.format(\'{"customer_id":"%08x-0000-7000-a000-000000000000","currency":"EUR",' +
      `"lines":[${line},${line},${line}]}', t))`,
    'forged-key-huge-body': `return wrk.format("POST", "/v1/invoices",
      { ["authorization"] = "Bearer ${FORGED_KEY.key}", ["content-type"] = "application/json" }, huge)`,
  }
  const huge = scenario === 'forged-key-huge-body'
    ? '\'{"customer_id":"00000001-0000-7000-a000-000000000000","currency":"EUR","lines":[\' .. ' +
      `string.rep('{},', ${HUGE_LINES - 1}) .. '{}]}'`
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
  io.write(string.format(` +
    '\'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\\n\',\n' +
    '    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), ' +
    `e.connect + e.read + e.write + e.timeout, e.status))
end
`
}

async function runWrk (job: LoadJob): Promise<Measure> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-wrk-'))
  try {
    const script = path.join(dir, 'load.lua')
    await writeFile(script, wrkScript(job.scenario, job.tenants, job.invoices))
    const args = ['-t', '1', '-c', String(job.connections), '-d', `${job.seconds}s`, '-s', script, job.url]
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    const match = /RESULT (\{.*\})/.exec(out)
    if (code !== 0 || match === null) throw new Error(`wrk failed: ${out}`)
    const r = JSON.parse(match[1]!) as {
      requests: number, duration_us: number, p50_us: number, p99_us: number, errors: number, non2xx: number,
    }
    return {
      rps: r.requests / (r.duration_us / 1e6),
      p50: r.p50_us / 1000,
      p99: r.p99_us / 1000,
      requests: r.requests,
      errors: r.errors + r.non2xx,
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export async function runLoad (job: LoadJob): Promise<Measure> {
  if (WRK !== undefined && job.tenant === undefined && job.rate === undefined) return runWrk(job)
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/bench-load.ts', JSON.stringify(job)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  if (code !== 0) throw new Error('the load generator failed')
  const r = JSON.parse(out) as Required<Measure> & { non2xx: number }
  const { rps, p50, p99, requests, statuses } = r
  return { rps, p50, p99, requests, errors: r.errors + r.non2xx, statuses }
}

/** Peak RSS (kB) and CPU time (clock ticks) of a process and its children on this machine. */
export async function processStats (pid: number): Promise<{ hwmKb: number, rssKb: number, cpuTicks: number }> {
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
