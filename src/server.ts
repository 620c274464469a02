// Entry point of `npm start`: prepare the database, serve, and shut down cleanly on SIGINT/SIGTERM.
// With WEB_CONCURRENCY > 1 the main process prepares once (database, migrations, safety checks) and
// forks that many workers sharing the port; each serves with the same resolved configuration.
import cluster from 'node:cluster'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig, type ResolvedConfig } from './config.ts'
import { MigrationError } from './ops/migrate.ts'
import { UnsafeDatabaseError } from './ops/safety-checks.ts'
import { prepare, start } from './main.ts'

const say = (line: string): void => { process.stderr.write(`rowfence: ${line}\n`) }
const WORKER_CONFIG = 'ROWFENCE_WORKER_CONFIG'

async function single (): Promise<void> {
  const config = loadConfig()
  const started = await start(config, { log: say })
  const { app } = started
  closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after an unexpected error')
    else app.log.info({ signal }, 'shutting down: finishing in-flight requests')
    await started.stop()
  })
  const address = await app.listen({ host: config.HOST, port: config.PORT })
  say(`listening on ${address} (API docs at ${address}/docs)`)
  if (started.adminTokenFile !== undefined) say(`operator token: ${started.adminTokenFile}`)
}

async function primary (): Promise<void> {
  const config = loadConfig()
  const prepared = await prepare(config, { log: say })
  let stopping = false
  const env = { [WORKER_CONFIG]: JSON.stringify(prepared.config) }
  const fork = (): void => { cluster.fork(env) }
  let announced = false
  cluster.on('message', (_worker, message: { listening?: string }) => {
    if (message.listening !== undefined && !announced) {
      announced = true
      say(`listening on ${message.listening} with ${config.WEB_CONCURRENCY} workers (API docs at ${message.listening}/docs)`)
      if (prepared.adminTokenFile !== undefined) say(`operator token: ${prepared.adminTokenFile}`)
    }
  })
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return
    say(`worker ${worker.process.pid} exited (${signal ?? code}); starting another`)
    fork()
  })
  for (let i = 0; i < config.WEB_CONCURRENCY; i++) fork()
  closeWithGrace({ delay: 15_000 }, async ({ signal }) => {
    stopping = true
    say(`shutting down on ${signal ?? 'request'}: letting workers finish in-flight requests`)
    await Promise.all(Object.values(cluster.workers ?? {}).map(async (worker) => {
      if (worker === undefined || worker.isDead()) return
      const exited = new Promise((resolve) => worker.once('exit', resolve))
      worker.process.kill('SIGTERM')
      await exited
    }))
    await prepared.embedded?.stop()
  })
}

async function worker (): Promise<void> {
  const config = JSON.parse(process.env[WORKER_CONFIG]!) as ResolvedConfig
  const app = await buildApp(config)
  closeWithGrace({ delay: 10_000 }, async ({ err }) => {
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

main().catch((error: unknown) => {
  const known = error instanceof ConfigError || error instanceof UnsafeDatabaseError || error instanceof MigrationError
  say(known ? (error as Error).message : `failed to start: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
