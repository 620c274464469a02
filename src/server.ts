// Entry point of `npm start`: build, listen, and shut down cleanly on SIGINT/SIGTERM.
import closeWithGrace from 'close-with-grace'
import { ConfigError, loadConfig } from './config.ts'
import { MigrationError } from './db/migrate.ts'
import { UnsafeDatabaseError } from './db/safety-checks.ts'
import { start } from './main.ts'

const say = (line: string): void => { process.stderr.write(`rowfence: ${line}\n`) }

async function main (): Promise<void> {
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

main().catch((error: unknown) => {
  const known = error instanceof ConfigError || error instanceof UnsafeDatabaseError || error instanceof MigrationError
  say(known ? (error as Error).message : `failed to start: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
