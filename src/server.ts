// Entry point of `npm start`: prepare the database, serve, and shut down cleanly on SIGINT/SIGTERM.
// With WEB_CONCURRENCY > 1 the main process prepares once (database, migrations, safety checks) and
// forks that many workers sharing the port; each serves with the same resolved configuration.
import cluster from 'node:cluster'
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { buildApp } from './app.ts'
import { startJobWorker } from './jobs/job-worker.ts'
import { ConfigError, loadConfig, type Config, type ResolvedConfig } from './config.ts'
import { EmbeddedInUse } from './ops/embedded.ts'
import { MigrationError } from './ops/migrate.ts'
import { UnsafeDatabaseError } from './ops/safety-checks.ts'
import { readServerRecord, writeServerRecord, type RecordedServer } from './ops/server-record.ts'
import { prepare, queueGaugesOnly, start } from './main.ts'

const say = (line: string): void => { process.stderr.write(`rowfence: ${line}\n`) }
const WORKER_CONFIG = 'ROWFENCE_WORKER_CONFIG'

/** How long a shutdown may take before the process exits anyway: requests' 10 s, or the jobs' grace and a margin. */
const shutdownDelayMs = (config: Config): number => Math.max(10_000, config.WORKER_SHUTDOWN_GRACE_MS + 5000)

async function single (): Promise<void> {
  const config = loadConfig()
  const started = await start(config, { log: say })
  const { app } = started
  // Set once listening: a shutdown first unrecords the server, so that the CLI stops finding it.
  const recorded: { server?: RecordedServer } = {}
  closeWithGrace({ delay: shutdownDelayMs(config) }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
    else app.log.info({ signal }, 'shutting down: finishing in-flight requests')
    recorded.server?.remove()
    await started.stop()
  })
  let address: string
  try {
    address = await app.listen({ host: config.HOST, port: config.PORT })
  } catch (error) {
    await started.stop()
    throw error
  }
  const { adminTokenFile } = started
  const ownsFolder = started.embedded !== undefined
  recorded.server = await writeServerRecord(config.DATA_DIR, { url: address, adminTokenFile, ownsFolder }, say)
  say(`listening on ${address} (API docs at ${address}/docs)`)
  if (started.adminTokenFile !== undefined) say(`operator token: ${started.adminTokenFile}`)
  if (started.jwtSecretFile !== undefined) say(`user JWT secret (development, generated): ${started.jwtSecretFile}`)
}

async function primary (): Promise<void> {
  const config = loadConfig()
  const prepared = await prepare(config, { log: say })
  let stopping = false
  const env = { [WORKER_CONFIG]: JSON.stringify(prepared.config) }
  const fork = (): void => { cluster.fork(env) }
  let announced = false
  let recorded: RecordedServer | undefined
  cluster.on('message', (_worker, message: { listening?: string }) => {
    if (message.listening !== undefined && !announced) {
      announced = true
      const url = message.listening
      say(`listening on ${url} with ${config.WEB_CONCURRENCY} workers (API docs at ${url}/docs)`)
      if (prepared.adminTokenFile !== undefined) say(`operator token: ${prepared.adminTokenFile}`)
      if (prepared.jwtSecretFile !== undefined) {
        say(`user JWT secret (development, generated): ${prepared.jwtSecretFile}`)
      }
      const ownsFolder = prepared.embedded !== undefined
      writeServerRecord(config.DATA_DIR, { url, adminTokenFile: prepared.adminTokenFile, ownsFolder }, say)
        .then((r) => { recorded = r }, (error: unknown) => { say(`could not record the server: ${String(error)}`) })
    }
  })
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return
    say(`worker ${worker.process.pid} exited (${signal ?? code}); starting another`)
    fork()
  })
  for (let i = 0; i < config.WEB_CONCURRENCY; i++) fork()
  // The job worker, here in the primary: it serves no request, so jobs never delay one. Its job counters
  // are in its log lines; the queue's gauges are on every serving process's /metrics.
  const jobs = prepared.config.RUN_WORKER
    ? await startJobWorker(prepared.config, pino({ level: config.LOG_LEVEL }).child({ component: 'worker' }))
    : undefined
  closeWithGrace({ delay: shutdownDelayMs(config) + 5000 }, async ({ signal }) => {
    stopping = true
    recorded?.remove()
    say(`shutting down on ${signal ?? 'request'}: letting workers finish in-flight requests and jobs`)
    await Promise.all([jobs?.stop(), ...Object.values(cluster.workers ?? {}).map(async (worker) => {
      if (worker === undefined || worker.isDead()) return
      const exited = new Promise((resolve) => worker.once('exit', resolve))
      worker.process.kill('SIGTERM')
      await exited
    })])
    await prepared.embedded?.stop()
  })
}

async function worker (): Promise<void> {
  const config = JSON.parse(process.env[WORKER_CONFIG]!) as ResolvedConfig
  const app = await buildApp(config)
  // The job worker runs in the primary, which serves no request: its work never delays one here.
  queueGaugesOnly(app)
  closeWithGrace({ delay: shutdownDelayMs(config) }, async ({ err }) => {
    if (err !== undefined) app.log.error({ err }, 'worker shutting down after an unexpected error')
    await app.close()
  })
  const address = await app.listen({ host: config.HOST, port: config.PORT })
  process.send?.({ listening: address })
}

async function main (): Promise<void> {
  if (cluster.isWorker) return worker()
  if (loadConfig().WEB_CONCURRENCY > 1) return primary()
  return single()
}

/**
 * One line for a start that cannot go on because something else holds what it needs: the data
 * folder's database (a second `npm start`) or the port. Undefined for any other error.
 */
async function alreadyRunning (error: unknown, config: Config | undefined): Promise<string | undefined> {
  const code = (error as { code?: unknown }).code
  if (!(error instanceof EmbeddedInUse) && code !== 'EADDRINUSE') return undefined
  // Read only to name the other server; the line stands without it (and the start-up error is what to report).
  const other = config === undefined ? undefined : await readServerRecord(config.DATA_DIR).catch(() => undefined)
  const serving = other === undefined ? '' : ` (rowfence pid ${other.pid} serves ${other.url})`
  if (error instanceof EmbeddedInUse) {
    return `not starting: ${error.message}${serving}`
  }
  return `not starting: port ${config?.PORT ?? '?'} on ${config?.HOST ?? '?'} is already in use${serving}: ` +
    'stop what holds it, or set PORT to another port'
}

main().catch(async (error: unknown) => {
  const known = error instanceof ConfigError || error instanceof UnsafeDatabaseError || error instanceof MigrationError
  let config: Config | undefined
  try {
    config = loadConfig()
  } catch {
    config = undefined // a bad environment: already the error reported
  }
  const busy = await alreadyRunning(error, config)
  if (busy !== undefined) say(busy)
  else if (known) say((error as Error).message)
  else say(`failed to start: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
