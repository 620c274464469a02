// npm run bench:tenants -- [--sizes 10,1000,10000] [--placement pooled|dedicated]
//
// How the tenant layout scales. Onboards tenants (through the operator API, in process) up to each
// size and reports, at each size:
//   - onboarding time per tenant (mean and p99 over the last tenants onboarded),
//   - p50/p99 latency of reading one invoice through the whole tenant pipeline,
//   - planning time of that read's query, with the scoping plugin's predicate and with RLS alone,
//   - the private memory (RssAnon) of one pooled backend after it has served 1,000 different tenants.
// Uses BENCH_DATABASE_URL (a superuser on a server on this machine, for /proc) or an embedded PostgreSQL.
// Results: bench/results/tenants-<placement>-<time>.{json,md}.
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { bootstrapDatabase } from '../src/ops/bootstrap.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'
import type { DB } from '../src/db/schema.ts'
import { loadTenantTables, TenantScopePlugin } from '../src/db/tenant-scope.ts'
import { PLAINTEXT } from '../src/db/tls.ts'

const say = (line: string): void => { process.stderr.write(`bench:tenants: ${line}\n`) }

function quantile (values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}
const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length
const round = (n: number, digits = 2): number => Number(n.toFixed(digits))

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { resolve(typeof address === 'object' && address !== null ? address.port : 0) })
    })
  })
}

async function rssAnonKb (pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const match = /RssAnon:\s+(\d+) kB/.exec(status)
    return match === null ? null : Number(match[1])
  } catch {
    return null // the server runs elsewhere
  }
}

interface Tenant { id: string, key: string, invoiceId?: string }

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '10,1000,10000' },
      placement: { type: 'string', default: 'pooled' },
    },
  })
  const sizes = values.sizes.split(',').map(Number)
  const placement = values.placement
  if (sizes.some((n) => !Number.isInteger(n) || n < 1) || (placement !== 'pooled' && placement !== 'dedicated')) {
    throw new Error('--sizes is a comma-separated list of positive integers; --placement is pooled or dedicated')
  }

  let adminUrl = process.env.BENCH_DATABASE_URL
  let stopServer = async (): Promise<void> => {}
  if (adminUrl === undefined) {
    const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-bench-'))
    const embedded = await startEmbedded({
      dataDir: dir,
      port: await freePort(),
      database: 'unused',
      persistent: false,
    })
    adminUrl = embedded.adminUrl
    stopServer = async () => { await embedded.stop(); await rm(dir, { recursive: true, force: true }) }
    say('using an embedded PostgreSQL (set BENCH_DATABASE_URL to use another server)')
  }
  const database = `rowfence_bench_${randomBytes(3).toString('hex')}`
  const urls = await bootstrapDatabase({
    adminUrl,
    database,
    ownerPassword: randomBytes(12).toString('hex'),
    appPassword: randomBytes(12).toString('hex'),
  })
  await migrate(urls.ownerUrl)
  const adminToken = randomBytes(32).toString('base64url')
  const app = await buildApp({
    ...loadConfig({}), // every other setting at its default
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    DATABASE_URL: urls.ownerUrl,
    APP_DATABASE_URL: urls.appUrl,
    ADMIN_TOKEN: adminToken,
    DB_POOL_MAX: 4,
    DB_OPERATOR_POOL_MAX: 2,
    DB_CONNECT_TIMEOUT_MS: 10_000,
    BODY_LIMIT_BYTES: 1 << 20,
    KEY_USAGE_FLUSH_MS: 60_000,
    CREDENTIAL_CACHE_TTL_MS: 10_000,
    jwt: undefined,
    databaseTls: PLAINTEXT,
  })
  await app.ready()
  const appPool = new pg.Pool({ connectionString: urls.appUrl, max: 2 })
  const tables = await loadTenantTables(appPool)
  // Only compiles queries (the same way the request pipeline does); never executes through this one.
  const compiler = new Kysely<DB>({ dialect: new PostgresDialect({ pool: appPool }) })

  const tenants: Tenant[] = []
  const results: Array<Record<string, number | string | null>> = []
  try {
    for (const size of sizes) {
      const onboarding: number[] = []
      while (tenants.length < size) {
        const slug = `t${tenants.length}-${randomBytes(3).toString('hex')}`
        const started = performance.now()
        const res = await app.inject({
          method: 'POST',
          url: '/admin/v1/tenants',
          headers: { authorization: `Bearer ${adminToken}` },
          payload: { name: slug, slug, placement },
        })
        onboarding.push(performance.now() - started)
        if (res.statusCode !== 201) throw new Error(`onboarding failed at ${tenants.length}: ${res.body}`)
        const body = res.json<{ tenant: { id: string }, api_key: { key: string } }>()
        tenants.push({ id: body.tenant.id, key: body.api_key.key })
        if (tenants.length % 1000 === 0) say(`${tenants.length} tenants onboarded`)
      }
      const recent = onboarding.slice(-200)

      // Readers: up to 100 tenants spread over all of them, each with one invoice of 3 lines.
      const step = Math.max(1, Math.floor(tenants.length / 100))
      const readers = tenants.filter((_, i) => i % step === 0).slice(0, 100)
      for (const t of readers) {
        if (t.invoiceId !== undefined) continue
        const auth = { authorization: `Bearer ${t.key}` }
        const customer = await app.inject({
          method: 'POST',
          url: '/v1/customers',
          headers: auth,
          payload: { name: 'c' },
        })
        const line = { description: 'item', quantity: 2, unit_amount_cents: 150 }
        const invoice = await app.inject({
          method: 'POST',
          url: '/v1/invoices',
          headers: auth,
          payload: { customer_id: customer.json<{ id: string }>().id, currency: 'EUR', lines: [line, line, line] },
        })
        t.invoiceId = invoice.json<{ id: string }>().id
      }
      const latencies: number[] = []
      for (let i = 0; i < 2000; i++) {
        const t = readers[i % readers.length]!
        const started = performance.now()
        const res = await app.inject({
          method: 'GET',
          url: `/v1/invoices/${t.invoiceId!}`,
          headers: { authorization: `Bearer ${t.key}` },
        })
        latencies.push(performance.now() - started)
        if (res.statusCode !== 200) throw new Error(`read failed: ${res.body}`)
      }

      // Planning time of the read, as the runtime role: with the plugin's predicate, and RLS alone.
      const planning = { scoped: [] as number[], rlsOnly: [] as number[] }
      const client = await appPool.connect()
      try {
        for (const t of readers.slice(0, 20)) {
          await client.query('BEGIN')
          await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [t.id])
          const shard = (await client.query<{ shard: number }>('SELECT shard FROM tenants WHERE id = $1', [t.id]))
            .rows[0]!.shard
          const q = compiler.withPlugin(new TenantScopePlugin(tables, { tenantId: t.id, shard }))
            .selectFrom('invoices').selectAll().where('id', '=', t.invoiceId!).compile()
          const plan = async (text: string, params: readonly unknown[]): Promise<number> => {
            const { rows: [row] } = await client.query(`EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) ${text}`, [...params])
            return (row['QUERY PLAN'] as Array<{ 'Planning Time': number }>)[0]!['Planning Time']
          }
          planning.scoped.push(await plan(q.sql, q.parameters))
          planning.rlsOnly.push(await plan('SELECT * FROM invoices WHERE id = $1', [t.invoiceId!]))
          await client.query('COMMIT')
        }
      } finally {
        client.release()
      }

      // Memory of one backend that has served many tenants (as a pooled connection does).
      const served = tenants.slice(0, 1000)
      const backend = new pg.Client({ connectionString: urls.appUrl })
      await backend.connect()
      let memoryBefore: number | null = null
      let memoryAfter: number | null = null
      try {
        const pid = (await backend.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid
        memoryBefore = await rssAnonKb(pid)
        for (const t of served) {
          await backend.query('BEGIN')
          await backend.query("SELECT set_config('app.current_tenant_id', $1, true)", [t.id])
          const shard = (await backend.query<{ shard: number }>('SELECT shard FROM tenants WHERE id = $1', [t.id]))
            .rows[0]!.shard
          await backend.query(
            'SELECT * FROM invoices i JOIN invoice_lines l ' +
              'ON l.tenant_id = i.tenant_id AND l.invoice_id = i.id AND l.shard = i.shard ' +
              'WHERE i.tenant_id = $1 AND i.shard = $2 LIMIT 1',
            [t.id, shard])
          await backend.query('COMMIT')
        }
        memoryAfter = await rssAnonKb(pid)
      } finally {
        await backend.end()
      }
      const partitions = (await appPool.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_class WHERE relispartition AND relkind = 'r'")).rows[0]!.n

      const row = {
        tenants: size,
        placement,
        partitions,
        onboarding_mean_ms: round(mean(recent)),
        onboarding_p99_ms: round(quantile(recent, 0.99)),
        read_p50_ms: round(quantile(latencies, 0.5), 3),
        read_p99_ms: round(quantile(latencies, 0.99), 3),
        planning_scoped_ms: round(quantile(planning.scoped, 0.5), 3),
        planning_rls_only_ms: round(quantile(planning.rlsOnly, 0.5), 3),
        backend_rss_anon_kb_fresh: memoryBefore,
        backend_rss_anon_kb_after_1000_tenants: memoryAfter,
      }
      results.push(row)
      say(JSON.stringify(row))
    }
  } finally {
    await appPool.end()
    await app.close()
    await stopServer()
  }

  const base = results[0]!
  const header = '| tenants | placement | partitions | onboarding mean / p99 (ms) | read p50 / p99 (ms) ' +
    '| read p50 vs first | planning scoped / RLS only (ms) | backend RssAnon fresh → after 1,000 tenants (kB) |'
  const lines = [header, '|---|---|---|---|---|---|---|---|', ...results.map((r) =>
    `| ${r.tenants} | ${r.placement} | ${r.partitions} | ${r.onboarding_mean_ms} / ${r.onboarding_p99_ms} ` +
    `| ${r.read_p50_ms} / ${r.read_p99_ms} | ${round(Number(r.read_p50_ms) / Number(base.read_p50_ms))}× ` +
    `| ${r.planning_scoped_ms} / ${r.planning_rls_only_ms} | ` +
    `${r.backend_rss_anon_kb_fresh ?? 'n/a'} → ${r.backend_rss_anon_kb_after_1000_tenants ?? 'n/a'} |`)]
  const markdown = lines.join('\n') + '\n'
  process.stdout.write(markdown)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  await writeFile(`bench/results/tenants-${placement}-${stamp}.json`, JSON.stringify(results, null, 2) + '\n')
  await writeFile(`bench/results/tenants-${placement}-${stamp}.md`, markdown)
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
