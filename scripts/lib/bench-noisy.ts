// The noisy-neighbour scenario of `npm run bench -- --scenarios noisy-neighbour`: how much one tenant's
// latency suffers while another tenant hammers the same server. Tenant B (a well-behaved client: GET one
// invoice, 4 connections, paced under its rate limit) is measured alone, then while tenant A lists
// invoices as fast as 64 connections allow. Each server configuration is its own process, with the
// server's default limits unless the configuration says otherwise: the defaults (rates and share), the
// share alone (rates off, so that A reaches the database), and nothing (the share off too: what the
// share protects B from). Load from autocannon (one tenant, paced), whatever else is installed.
import { mkdir, writeFile } from 'node:fs/promises'
import { median, runLoad, say, type LoadJob, type Measure } from './bench-runners.ts'
import { scrapeRefusals, startServer, type Dataset } from './bench-server.ts'

export interface NoisyOptions {
  serverDir: string
  urls: Dataset['urls']
  tenants: number
  invoices: number
  seconds: number
  repeat: number
  workers: string
  pool: string
  label: string
  /** B's paced rate (requests per second over its 4 connections): under its default rate limit. */
  bRate: number
}

const CONFIGS: Array<{ name: string, env: Record<string, string> }> = [
  { name: 'defaults', env: {} },
  { name: 'share only (rates unlimited)', env: { LIMIT_REQUESTS_PER_SECOND: 'unlimited', LIMIT_BURST: 'unlimited' } },
  {
    name: 'no limits (share and rates unlimited)',
    env: { LIMIT_REQUESTS_PER_SECOND: 'unlimited', LIMIT_BURST: 'unlimited', LIMIT_CONCURRENT_REQUESTS: 'unlimited' },
  },
]

const A = 1
const B = 2
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const ms = (v: number): number => Number(v.toFixed(2))

/** Statuses of A's responses summed over runs, e.g. { 200: 1234, 429: 56789 }. */
function sumStatuses (measures: Measure[]): Record<string, number> {
  const sum: Record<string, number> = {}
  for (const m of measures) for (const [s, n] of Object.entries(m.statuses ?? {})) sum[s] = (sum[s] ?? 0) + n
  return sum
}

export async function measureNoisyNeighbour (options: NoisyOptions): Promise<void> {
  const { seconds, repeat } = options
  const base = { tenants: options.tenants, invoices: options.invoices }
  const rows: Array<Record<string, unknown>> = []
  for (const config of CONFIGS) {
    const server = await startServer(options.serverDir, options.urls, {
      workers: options.workers, pool: options.pool, profile: false, env: config.env,
    })
    try {
      const url = server.url
      const rate = options.bRate
      const b: LoadJob = { ...base, url, scenario: 'get-invoice', connections: 4, seconds, tenant: B, rate }
      // A runs a second longer on each side, so that B's whole measurement falls under A's load.
      const a: LoadJob = { ...base, url, scenario: 'list-invoices', connections: 64, seconds: seconds + 2, tenant: A }
      await Promise.all([runLoad({ ...b, seconds: 2 }), runLoad({ ...a, seconds: 2 })]) // warm-up
      const runs: Array<{ alone: Measure, withA: Measure, a: Measure, refusals: Record<string, number> }> = []
      for (let r = 0; r < repeat; r++) {
        await sleep(1000) // A's last requests drain
        const alone = await runLoad(b)
        const before = await scrapeRefusals(server.url)
        const loadA = runLoad(a)
        await sleep(1000)
        const withA = await runLoad(b)
        const aMeasure = await loadA
        const after = await scrapeRefusals(server.url)
        const refusals: Record<string, number> = {}
        for (const [reason, n] of Object.entries(after)) {
          if (n - (before[reason] ?? 0) > 0) refusals[reason] = n - (before[reason] ?? 0)
        }
        runs.push({ alone, withA, a: aMeasure, refusals })
        say(`noisy-neighbour (${config.name}) run ${r + 1}: B alone p99 ${ms(alone.p99)} ms, with A ` +
          `${ms(withA.p99)} ms; A ${Math.round(aMeasure.rps)} req/s ${JSON.stringify(aMeasure.statuses)}`)
      }
      const refusals: Record<string, number> = {}
      for (const run of runs) {
        for (const [reason, n] of Object.entries(run.refusals)) refusals[reason] = (refusals[reason] ?? 0) + n
      }
      const aStatuses = sumStatuses(runs.map((x) => x.a))
      const aRequests = Object.values(aStatuses).reduce((n, x) => n + x, 0)
      rows.push({
        config: config.name,
        env: config.env,
        runs: repeat,
        b_rate: options.bRate,
        b_alone_p50_ms: ms(median(runs.map((x) => x.alone.p50))),
        b_alone_p99_ms: ms(median(runs.map((x) => x.alone.p99))),
        b_with_a_p50_ms: ms(median(runs.map((x) => x.withA.p50))),
        b_with_a_p99_ms: ms(median(runs.map((x) => x.withA.p99))),
        // The median of the runs' own ratios (each run's alone and with-A phases are back to back).
        b_p99_ratio: Number(median(runs.map((x) => x.withA.p99 / x.alone.p99)).toFixed(2)),
        b_non2xx_with_a: runs.reduce((n, x) => n + (x.withA.errors ?? 0), 0),
        a_rps: Math.round(median(runs.map((x) => x.a.rps))),
        a_ok_rps: Math.round(median(runs.map((x) => (x.a.statuses?.['200'] ?? 0) / (seconds + 2)))),
        a_statuses: aStatuses,
        a_refused_share: aRequests === 0 ? null : Number((1 - (aStatuses['200'] ?? 0) / aRequests).toFixed(3)),
        refusals_by_reason: refusals,
      })
      say(`noisy-neighbour: ${JSON.stringify(rows.at(-1))}`)
    } finally {
      await server.stop()
    }
  }

  const fmt = (o: Record<string, number>): string =>
    Object.keys(o).length === 0 ? '–' : Object.entries(o).map(([k, v]) => `${k}: ${v}`).join(', ')
  const table = [
    `Noisy neighbour: tenant B GET one invoice, 4 connections paced at ${options.bRate} req/s, ${seconds} s alone ` +
      `then ${seconds} s while tenant A lists invoices (limit 50) at 64 connections; ${repeat} alternating runs, ` +
      `medians; pool ${options.pool} (DB_POOL_MAX), ${options.workers} worker(s); load: autocannon.`,
    '',
    '| server limits | B p50 / p99 alone (ms) | B p50 / p99 with A (ms) | B p99 with ÷ alone | B non-2xx with A ' +
      '| A req/s (answered) | A 200/s | A statuses (all runs) | refusals by reason (all runs) |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${String(r.config)} | ${String(r.b_alone_p50_ms)} / ${String(r.b_alone_p99_ms)} ` +
      `| ${String(r.b_with_a_p50_ms)} / ${String(r.b_with_a_p99_ms)} | ${String(r.b_p99_ratio)} ` +
      `| ${String(r.b_non2xx_with_a)} | ${String(r.a_rps)} | ${String(r.a_ok_rps)} ` +
      `| ${fmt(r.a_statuses as Record<string, number>)} | ${fmt(r.refusals_by_reason as Record<string, number>)} |`),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const file = `bench/results/noisy-neighbour-${options.label}-${stamp}`
  await writeFile(`${file}.json`, JSON.stringify({ ...options, urls: undefined, rows }, null, 2) + '\n')
  await writeFile(`${file}.md`, table)
  say(`noisy-neighbour: written to ${file}.md`)
}
