// What `npm run bench` (scripts/bench.ts) measures: a seeded benchmark database of a size, and the
// server started against it in production mode as a process of its own.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import pg from 'pg'
import { bootstrapDatabase, withDatabase } from '../../src/ops/bootstrap.ts'
import { migrate } from '../../src/ops/migrate.ts'
import { loadTenantTables } from '../../src/db/tenant-scope.ts'
import { seed, tenantsByShard } from './bench-data.ts'
import { say } from './bench-runners.ts'

/** The server's METRICS_TOKEN (a server from before it existed serves /metrics to anyone, header or not). */
const METRICS_TOKEN = randomBytes(32).toString('base64url')

export async function scrapeRoundTrips (url: string): Promise<number | undefined> {
  try {
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text()
    const match = /^rowfence_db_round_trips_total (\d+)/m.exec(text)
    return match === null ? undefined : Number(match[1])
  } catch {
    return undefined
  }
}

/** The server's limit refusals so far, by reason (rowfence_limit_refusals_total); empty when unreadable. */
export async function scrapeRefusals (url: string): Promise<Record<string, number>> {
  try {
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text()
    const refusals: Record<string, number> = {}
    for (const m of text.matchAll(/^rowfence_limit_refusals_total\{reason="([a-z_]+)"\} (\d+)/gm)) {
      refusals[m[1]!] = Number(m[2])
    }
    return refusals
  } catch {
    return {}
  }
}

export interface Dataset {
  tenants: number,
  invoices: number,
  database: string,
  urls: Awaited<ReturnType<typeof bootstrapDatabase>>,
  tables: Awaited<ReturnType<typeof loadTenantTables>>,
  shards: Map<number, number[]>,
}

/**
 * The benchmark database of a size: created, migrated and seeded (reusing what earlier runs seeded).
 * `suffix` names a database of its own (several servers side by side); `sqlDir` migrates it with another
 * checkout's migrations (a server from before a schema change, on the schema it was written for).
 */
export async function prepareDataset (
  adminUrl: string,
  tenants: number,
  invoices: number,
  options: { suffix?: string, sqlDir?: string } = {}
): Promise<Dataset> {
  const database = `rowfence_bench_${tenants}x${invoices}${options.suffix ?? ''}`
  const urls = await bootstrapDatabase({ adminUrl, database, ownerPassword: 'bench-owner', appPassword: 'bench-app' })
  await migrate(urls.ownerUrl, options.sqlDir === undefined ? {} : { dir: options.sqlDir })
  say(`seeding ${tenants} tenants × ${invoices} invoices (3 lines each) in ${database}, reusing earlier runs' data`)
  await seed(withDatabase(adminUrl, database), tenants, invoices, say)
  const probe = new pg.Pool({ connectionString: urls.appUrl, max: 1 })
  const tables = await loadTenantTables(probe)
  await probe.end()
  return { tenants, invoices, database, urls, tables, shards: await tenantsByShard(urls.ownerUrl, tenants) }
}

export interface RunningServer { url: string, pid: number, stop: () => Promise<void> }

/**
 * The server of `serverDir`, started exactly as `npm start` starts it (its node flags included), in
 * production mode.
 */
export async function startServer (
  serverDir: string,
  urls: Dataset['urls'],
  options: { workers: string, pool: string, profile: boolean, env?: Record<string, string> }
): Promise<RunningServer> {
  // --profile: a V8 CPU profile of the server per process, in bench/profiles (open in Chrome DevTools).
  const profiling = options.profile ? ['--cpu-prof', '--cpu-prof-dir', path.resolve('bench/profiles')] : []
  const packageJson = JSON.parse(await readFile(path.join(serverDir, 'package.json'), 'utf8')) as {
    scripts: { start: string },
  }
  const start = packageJson.scripts.start.split(/\s+/)
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
      ...options.env,
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
