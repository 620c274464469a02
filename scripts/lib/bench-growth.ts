// `npm run bench -- --growth TxI` (scripts/bench.ts): how one read's latency grows with the data.
import { mkdir, writeFile } from 'node:fs/promises'
import pg from 'pg'
import { pgbenchScripts } from './bench-sql.ts'
import { median, runLoad, runPgbench, say, WRK, type Measure } from './bench-runners.ts'
import type { Dataset, RunningServer } from './bench-server.ts'

/**
 * --growth TxI: how the latency of one read (GET /v1/invoices/:id) grows from the base dataset to a
 * larger one. One server per dataset; the two take turns `repeat` times at each concurrency (a
 * warm-up before every run, as each evicts the other's pages), and each turn is followed by pgbench
 * running the server's own statements on the same dataset: the database's own growth for that SQL.
 * The ratios are medians of the turns' own ratios (large ÷ base), the machine being noisy.
 */
export async function measureGrowth (job: {
  pgbench: string | undefined,
  base: Dataset,
  large: Dataset,
  servers: [RunningServer, RunningServer],
  connections: number[],
  seconds: number,
  repeat: number,
}): Promise<Array<Record<string, unknown>>> {
  const rows: Array<Record<string, unknown>> = []
  const datasets = [job.base, job.large] as const
  // The server's statements on each dataset, captured once (they depend on its shards, not on the turn).
  const serverSql = await Promise.all(datasets.map(async (d) =>
    pgbenchScripts('get-invoice', 'server', d.tables, d.tenants, d.invoices, d.shards)))
  for (const c of job.connections) {
    const turns: Array<Array<{ http: Measure, sameSql?: Measure }>> = [[], []]
    for (let r = 0; r < job.repeat; r++) {
      for (const [i, data] of datasets.entries()) {
        const load = {
          url: job.servers[i]!.url,
          scenario: 'get-invoice' as const,
          connections: c,
          seconds: job.seconds,
          tenants: data.tenants,
          invoices: data.invoices,
        }
        await runLoad({ ...load, seconds: 2 }) // warm-up
        const http = await runLoad(load)
        const sameSql = job.pgbench === undefined
          ? undefined
          : await runPgbench(job.pgbench, data.urls.appUrl, serverSql[i]!, c, job.seconds)
        turns[i]!.push({ http, ...(sameSql !== undefined && { sameSql }) })
        say(`growth: ${data.tenants}x${data.invoices} at ${c} connections, turn ${r + 1}: ` +
          `${Math.round(http.rps)} req/s, p50 ${http.p50.toFixed(2)} ms`)
      }
    }
    const [base, large] = turns as [typeof turns[0], typeof turns[0]]
    const ratio = (pick: (m: { http: Measure, sameSql?: Measure }) => number | undefined): number | null => {
      const xs = base.flatMap((b, r) => {
        const x = pick(large[r]!)
        const y = pick(b)
        return x === undefined || y === undefined ? [] : [x / y]
      })
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

/**
 * The growth table (stdout, bench/results/growth-*.md and .json), with the database's memory and the
 * datasets' sizes.
 */
export async function writeGrowth (rows: Array<Record<string, unknown>>, job: {
  base: Dataset,
  large: Dataset,
  seconds: number,
  repeat: number,
  label: string,
  workers: string,
  pool: string,
}): Promise<void> {
  const client = new pg.Client({ connectionString: job.large.urls.ownerUrl })
  await client.connect()
  const { rows: [db] } = await client.query<{ shared_buffers: string, base: string, large: string }>(
    "SELECT current_setting('shared_buffers') AS shared_buffers, pg_size_pretty(pg_database_size($1)) AS base, " +
      'pg_size_pretty(pg_database_size(current_database())) AS large',
    [job.base.database])
  await client.end()
  const name = (d: Dataset): string => `${d.tenants} × ${d.invoices}`
  const fmt = (v: unknown): string => v === null || v === undefined ? '–' : Array.isArray(v) ? v.join(', ') : String(v)
  const table = [
    `GET /v1/invoices/:id as the data grows from ${name(job.base)} (${db!.base}) to ` +
      `${name(job.large)} (${db!.large}) invoices; PostgreSQL shared_buffers ${db!.shared_buffers}; ` +
      `${job.seconds} s per run, the two datasets' servers taking turns ${job.repeat} times; ` +
      `server: ${job.label}, ${job.workers} worker(s), pool ${job.pool}; load: ${WRK ?? 'autocannon'}.`,
    'Growth = large ÷ base, the median of the turns\' own ratios; "server SQL" is pgbench running the ' +
      'server\'s statements on each dataset right after its turn (the database\'s own growth).',
    '',
    '| conns | p50 base / large ms (medians of the turns) | **p50 growth** (median of the turns\' ratios) ' +
      '| p50 growth per turn | p99 growth | req/s base / large | server SQL p50 growth | errors |',
    '|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${fmt(r.connections)} | ${fmt(r.base_p50_ms)} / ${fmt(r.large_p50_ms)} ` +
      `| **${fmt(r.p50_growth)}** | ${fmt(r.p50_growth_turns)} | ${fmt(r.p99_growth)} ` +
      `| ${fmt(r.rps_base)} / ${fmt(r.rps_large)} | ${fmt(r.server_sql_p50_growth)} | ${fmt(r.errors)} |`),
  ].join('\n') + '\n'
  process.stdout.write(table)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const sizes = {
    base: { tenants: job.base.tenants, invoices: job.base.invoices, size: db!.base },
    large: { tenants: job.large.tenants, invoices: job.large.invoices, size: db!.large },
  }
  const result = {
    ...sizes,
    shared_buffers: db!.shared_buffers,
    seconds: job.seconds,
    repeat: job.repeat,
    workers: job.workers,
    pool: job.pool,
    rows,
  }
  await writeFile(`bench/results/growth-${job.label}-${stamp}.json`, JSON.stringify(result, null, 2) + '\n')
  await writeFile(`bench/results/growth-${job.label}-${stamp}.md`, table)
}
