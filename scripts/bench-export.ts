// npm run bench:export -- [--rows 10000,1000000]
// Shows that an export streams in constant memory: for each size, seeds a tenant with that many
// customers (plus its invoices' usual rows), runs `npm run export` into /dev/null as a separate
// process, and reports its peak RSS and throughput. Uses an embedded PostgreSQL, or BENCH_DATABASE_URL.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { newId } from '../src/ids.ts'
import pg from 'pg'
import { bootstrapDatabase } from '../src/ops/bootstrap.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'

const say = (line: string): void => { process.stderr.write(`bench:export: ${line}\n`) }

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { resolve(typeof address === 'object' && address !== null ? address.port : 0) })
    })
  })
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { rows: { type: 'string', default: '10000,1000000' } } })
  const sizes = values.rows.split(',').map(Number)
  let adminUrl = process.env.BENCH_DATABASE_URL
  let stopServer = async (): Promise<void> => {}
  if (adminUrl === undefined) {
    const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-bench-export-'))
    const embedded = await startEmbedded({
      dataDir: dir,
      port: await freePort(),
      database: 'unused',
      persistent: false,
    })
    adminUrl = embedded.adminUrl
    stopServer = async () => { await embedded.stop(); await rm(dir, { recursive: true, force: true }) }
  }
  const urls = await bootstrapDatabase({
    adminUrl,
    database: `rowfence_bench_${randomBytes(3).toString('hex')}`,
    ownerPassword: randomBytes(12).toString('hex'),
    appPassword: randomBytes(12).toString('hex'),
  })
  await migrate(urls.ownerUrl)
  const owner = new pg.Client({ connectionString: urls.ownerUrl })
  await owner.connect()
  const results = []
  try {
    for (const rows of sizes) {
      const tenant = newId()
      await owner.query('BEGIN')
      await owner.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant])
      await owner.query('INSERT INTO tenants (id, name, slug, shard) VALUES ($1, $2, $3, pooled_shard_for($1))',
        [tenant, `bench ${rows}`, `bench-${rows}`])
      await owner.query(`INSERT INTO customers (id, name, email, external_ref)
        SELECT gen_random_uuid(), 'Customer ' || i, 'c' || i || '@example.com', 'ref-' || i
          FROM generate_series(1, $1) i`, [rows])
      await owner.query('COMMIT')
      say(`seeded a tenant with ${rows} customers`)
      const started = performance.now()
      const args = ['scripts/export.ts', '--tenant', tenant, '--out', '/dev/null']
      const child = spawn(path.resolve('node_modules/.bin/tsx'), args, {
        env: { ...process.env, DATABASE_URL: urls.ownerUrl, APP_DATABASE_URL: urls.appUrl },
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      let stderr = ''
      child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
      const seconds = (performance.now() - started) / 1000
      const match = /exported (\d+) rows .*peak RSS ([\d.]+) MB/.exec(stderr)
      if (code !== 0 || match === null) throw new Error(`export failed: ${stderr.slice(-500)}`)
      const row = {
        rows: Number(match[1]),
        peak_rss_mb: Number(match[2]),
        seconds: Number(seconds.toFixed(1)),
        rows_per_second: Math.round(Number(match[1]) / seconds),
      }
      say(JSON.stringify(row))
      results.push(row)
    }
  } finally {
    await owner.end()
    await stopServer()
  }
  const markdown = ['| rows exported | peak RSS of the export process | time | rows/s |', '|---|---|---|---|',
    ...results.map((r) => `| ${r.rows} | ${r.peak_rss_mb} MB | ${r.seconds} s | ${r.rows_per_second} |`),
  ].join('\n') + '\n'
  process.stdout.write(markdown)
  await mkdir('bench/results', { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  await writeFile(`bench/results/export-${stamp}.md`, markdown)
  await writeFile(`bench/results/export-${stamp}.json`, JSON.stringify(results, null, 2) + '\n')
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
