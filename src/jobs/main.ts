// Entry point of `npm run worker`: the job worker on its own (webhook deliveries, exports, and the
// maintenance sweep when the owner's URL is given), for deployments that run it apart from the API
// (RUN_WORKER=false there). It connects as the runtime role only, like the API's requests.
import path from 'node:path'
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { ConfigError, loadConfig, type Config } from '../config.ts'
import { databaseTls } from '../db/tls.ts'
import { lineFailureLog } from '../log-failure.ts'
import { assertSafeDatabase } from '../main.ts'
import { attachEmbedded } from '../ops/embedded.ts'
import { UnsafeDatabaseError } from '../ops/safety-checks.ts'
import { resolveWebhookSecretKey } from '../webhooks/settings.ts'
import { startJobWorker } from './job-worker.ts'

const say = (line: string): void => { process.stderr.write(`rowfence worker: ${line}\n`) }

/** The runtime role's URL: WORKER_DATABASE_URL, APP_DATABASE_URL, or the running `npm start`'s embedded database. */
async function databaseUrls (config: Config): Promise<{ appUrl: string, ownerUrl: string | undefined }> {
  const given = config.WORKER_DATABASE_URL ?? config.APP_DATABASE_URL
  if (given !== undefined) return { appUrl: given, ownerUrl: config.DATABASE_URL }
  const dataDir = path.resolve(config.DATA_DIR)
  const running = await attachEmbedded(dataDir, { waitMs: 5000 })
  if (running === undefined) {
    throw new ConfigError('no WORKER_DATABASE_URL nor APP_DATABASE_URL, and no embedded database running on ' +
      `${dataDir}: start the server first (npm start, which runs a worker itself) or set the URL`)
  }
  say(`using the embedded PostgreSQL running on ${dataDir} (port ${running.port})`)
  return { appUrl: running.appUrl, ownerUrl: running.ownerUrl }
}

async function main (): Promise<void> {
  const config = loadConfig(process.env, 'worker')
  const tls = databaseTls(config)
  const { appUrl, ownerUrl } = await databaseUrls(config)
  // The same refusal as the server's: a runtime role that could bypass row-level security runs no job.
  await assertSafeDatabase(appUrl, tls, lineFailureLog(say))
  const secretKey = await resolveWebhookSecretKey(config)
  if (secretKey === undefined) say('WEBHOOK_SECRET_KEY is not set: webhook deliveries wait until it is')
  const log = pino({ level: config.LOG_LEVEL }).child({ component: 'worker' })
  const worker = await startJobWorker({
    ...config,
    APP_DATABASE_URL: appUrl,
    WORKER_DATABASE_URL: config.WORKER_DATABASE_URL ?? appUrl,
    DATABASE_URL: ownerUrl,
    WEBHOOK_SECRET_KEY: secretKey,
    databaseTls: tls,
  }, log)
  closeWithGrace({ delay: config.WORKER_SHUTDOWN_GRACE_MS + 5000 }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'worker shutting down after an unexpected error')
    else log.info({ signal }, 'worker shutting down: finishing running jobs')
    await worker.stop()
  })
  await worker.done
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof UnsafeDatabaseError) say(error.message)
  else say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
