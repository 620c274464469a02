// npm run bench:usage-export [-- --tenants 10000,40000 --format csv]
// The operator's billing export (GET /admin/v1/usage) at several numbers of tenants: the server's resident
// memory while it streams, against its memory just before, to show it stays flat however many tenants
// there are. Needs BENCH_DATABASE_URL (a superuser); each size gets its database, seeded directly in SQL
// (tenants and a month of usage counters), and a server started as `npm start` starts it.
import { randomBytes } from 'node:crypto'
import { readFile, mkdir, writeFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { bootstrapDatabase, withDatabase } from '../src/ops/bootstrap.ts'
import { migrate } from '../src/ops/migrate.ts'
import { startServer } from './lib/bench-server.ts'
import { say } from './lib/bench-runners.ts'

const { values } = parseArgs({
  options: { tenants: { type: 'string', default: '10000,40000' }, format: { type: 'string', default: 'csv' } },
})
const adminUrl = process.env.BENCH_DATABASE_URL
if (adminUrl === undefined) throw new Error('set BENCH_DATABASE_URL to a superuser URL of a PostgreSQL server')
const sizes = values.tenants.split(',').map(Number)

/** The server process's resident set, in MB, from /proc. */
async function rssMb (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024
}

/** Tenants and one month's counters, added in SQL up to `tenants` (kept between runs). */
async function seed (url: string, tenants: number): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM tenants')
    const have = rows[0]!.n
    if (have >= tenants) return
    say(`seeding ${tenants - have} tenants and their usage`)
    await client.query(`
      WITH t AS (
        INSERT INTO tenants (id, name, slug, shard, status)
        SELECT id, 'Tenant ' || n, 'usage-' || n, pooled_shard_for(id), 'active'
          FROM (SELECT gen_random_uuid() AS id, n FROM generate_series($1::int + 1, $2::int) AS n) s
        RETURNING id)
      INSERT INTO usage_periods (tenant_id, period, metric, amount)
      SELECT t.id, usage_period(), m, (random() * 10000)::bigint
        FROM t, unnest(ARRAY['invoices_created', 'invoices_finalized', 'requests', 'events_delivered']) AS m`,
    [have, tenants])
  } finally {
    await client.end()
  }
}

const results: Array<Record<string, number>> = []
for (const tenants of sizes) {
  const database = `rowfence_bench_usage_${tenants}`
  const urls = await bootstrapDatabase({ adminUrl, database, ownerPassword: 'bench-owner', appPassword: 'bench-app' })
  await migrate(urls.ownerUrl)
  await seed(withDatabase(adminUrl, database), tenants)
  const token = randomBytes(32).toString('base64url')
  const server = await startServer(process.cwd(), urls, {
    workers: '1', pool: '4', profile: false, env: { ADMIN_TOKEN: token, RUN_WORKER: 'false' },
  })
  try {
    const download = async (sample?: (pid: number) => Promise<void>): Promise<{ lines: number, bytes: number }> => {
      const res = await fetch(`${server.url}/admin/v1/usage?format=${values.format}`,
        { headers: { authorization: `Bearer ${token}` } })
      if (res.status !== 200 || res.body === null) throw new Error(`the export answered ${res.status}`)
      let lines = 0
      let bytes = 0
      for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
        bytes += chunk.length
        for (const byte of chunk) if (byte === 10) lines++
        await sample?.(server.pid)
      }
      return { lines, bytes }
    }
    await download() // warm: compiled code, pools and caches as a running server has them
    const before = await rssMb(server.pid)
    let peak = before
    const started = performance.now()
    const { lines, bytes } = await download(async (pid) => { peak = Math.max(peak, await rssMb(pid)) })
    const seconds = (performance.now() - started) / 1000
    const row = {
      tenants, lines, mb: bytes / 1e6, seconds, rssBeforeMb: before, rssPeakMb: peak, rssGrowthMb: peak - before,
    }
    results.push(row)
    say(`${tenants} tenants: ${lines} lines, ${(bytes / 1e6).toFixed(1)} MB in ${seconds.toFixed(2)} s; ` +
      `server RSS ${before.toFixed(0)} MB before, ${peak.toFixed(0)} MB at most while streaming`)
  } finally {
    await server.stop()
  }
}
await mkdir('bench/results', { recursive: true })
const file = `bench/results/usage-export-${new Date().toISOString().replaceAll(':', '-').replace('.', '-')}.json`
await writeFile(file, JSON.stringify({ format: values.format, results }, null, 2) + '\n')
say(`written ${file}`)
