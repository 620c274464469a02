import path from 'node:path'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import { buildApp } from './app.ts'
import { jwtSettings, type Config, type ResolvedConfig } from './config.ts'
import { readOrCreateSecretFile, startEmbedded, type EmbeddedDatabase } from './ops/embedded.ts'
import { registerQueueGauges } from './jobs/job-metrics.ts'
import { startJobWorker } from './jobs/job-worker.ts'
import type { RunningWorker } from './jobs/worker.ts'
import { migrate } from './ops/migrate.ts'
import { sweepShards } from './tenancy/sweep.ts'
import { runSafetyChecks, UnsafeDatabaseError } from './ops/safety-checks.ts'
import { assertShardPartitions } from './ops/shard-checks.ts'
import { resolveExportSigningKey } from './tenancy/export-signature.ts'
import { resolveWebhookSecretKey } from './webhooks/settings.ts'
import { connectionOptions, databaseTls, PLAINTEXT, tlsFailure, type DatabaseTls } from './db/tls.ts'
import { lineFailureLog, type FailureLog } from './log-failure.ts'

/**
 * Start-up, in order: find the database (the configured one, or an embedded cluster), migrate it,
 * refuse to go on unless the isolation safety checks and the shard partition check hold, recover
 * what interrupted placement moves and erasures left behind (sweepShards), then build the app.
 */
export interface Prepared {
  config: ResolvedConfig
  embedded: EmbeddedDatabase | undefined
  adminTokenFile: string | undefined
  /** Where the generated development JWT secret lives (for `npm run token`), when one was generated. */
  jwtSecretFile: string | undefined
}

export interface Started extends Prepared {
  app: FastifyInstance
  /** Closes the app (finishing in-flight requests), then stops the embedded database. */
  stop: () => Promise<void>
}

export interface StartOptions {
  log?: (line: string) => void
}

/** Runs the safety checks as the runtime role and throws UnsafeDatabaseError listing every problem. */
export async function assertSafeDatabase (
  appDatabaseUrl: string, tls: DatabaseTls = PLAINTEXT, log?: FailureLog
): Promise<void> {
  const client = new pg.Client({ ...connectionOptions(appDatabaseUrl, tls), application_name: 'rowfence-check' })
  await client.connect()
  try {
    const report = await runSafetyChecks(client, log)
    if (!report.ok) throw new UnsafeDatabaseError(report.problems)
  } finally {
    await client.end()
  }
}

/**
 * One sweep (the same as POST /admin/v1/maintenance/sweep) before serving, so a tenant a crashed
 * instance left `moving`, or partitions no tenant lives in, do not wait for an operator. It skips
 * whatever a live operation holds, so instances starting side by side are safe; a failure is
 * reported, not fatal (the sweep can be run again at any time).
 */
async function sweepAtStartUp (ownerUrl: string, tls: DatabaseTls, log: (line: string) => void): Promise<void> {
  const pool = new pg.Pool({ ...connectionOptions(ownerUrl, tls), max: 2, application_name: 'rowfence-sweep' })
  // An idle connection lost: said here; the sweep's next query opens another (or reports why not).
  pool.on('error', (error) => { log(`start-up sweep: an idle database connection failed: ${error.message}`) })
  try {
    const swept = await sweepShards(pool, { log: lineFailureLog((line) => { log(`start-up sweep: ${line}`) }) })
    const done: string[] = []
    const { tenantsReset: reset, shardsReleased: released } = swept
    if (reset.length > 0) done.push(`set ${reset.length} tenant(s) left moving back to active (${reset.join(', ')})`)
    if (released.length > 0) done.push(`dropped the partitions of unused dedicated shard(s) ${released.join(', ')}`)
    if (swept.shardsLeft.length > 0) done.push(`left shard(s) ${swept.shardsLeft.join(', ')} for a later sweep (busy)`)
    if (done.length > 0) log(`start-up sweep: ${done.join('; ')}`)
  } catch (error) {
    const failure = tlsFailure(error, tls) ?? error
    const why = failure instanceof Error ? failure.message : String(failure)
    log(`start-up sweep failed (run POST /admin/v1/maintenance/sweep later): ${why}`)
  } finally {
    await pool.end()
  }
}

/**
 * Everything before the app: the database (configured or embedded), the secrets, migrations and the
 * safety checks. Done once per deployment start, also when several worker processes serve.
 */
export async function prepare (config: Config, options: StartOptions = {}): Promise<Prepared> {
  const log = options.log ?? (() => {})
  // Read once, before anything starts: every connection below (and the app's) uses it.
  const tls = databaseTls(config)
  let embedded: EmbeddedDatabase | undefined
  if (config.DATABASE_URL === undefined) {
    log(`no DATABASE_URL: starting the embedded PostgreSQL (data in ${path.resolve(config.DATA_DIR)})`)
    embedded = await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
  }
  try {
    const ownerUrl = embedded?.ownerUrl ?? config.DATABASE_URL!
    const appUrl = embedded?.appUrl ?? config.APP_DATABASE_URL!
    let adminTokenFile: string | undefined
    let adminToken = config.ADMIN_TOKEN
    if (adminToken === undefined) {
      // Outside production (loadConfig enforces that) a missing token is generated once and kept
      // in a file only this user can read.
      adminTokenFile = embedded?.adminTokenFile ?? path.resolve(config.DATA_DIR, 'admin-token')
      adminToken = embedded?.adminToken ?? await readOrCreateSecretFile(adminTokenFile)
    }
    // Outside production, JWT users work out of the box with a generated HS256 secret that
    // `npm run token` also reads; in production JWT is on only when configured.
    let jwtSecretFile: string | undefined
    let devJwtSecret: string | undefined
    if (config.JWT_SECRET === undefined && config.JWT_PUBLIC_KEY === undefined && config.NODE_ENV !== 'production') {
      jwtSecretFile = path.resolve(config.DATA_DIR, 'jwt-secret')
      devJwtSecret = await readOrCreateSecretFile(jwtSecretFile)
    }
    // Exports are signed with EXPORT_SIGNING_KEY; outside production a generated one (in DATA_DIR, which
    // `npm run export` and `npm run import` read too), in production none unless configured.
    const exportSigningKey = await resolveExportSigningKey(config)
    if (exportSigningKey === undefined) log('EXPORT_SIGNING_KEY is not set: tenant exports are refused until it is')
    const webhookSecretKey = await resolveWebhookSecretKey(config)
    if (webhookSecretKey === undefined) {
      log('WEBHOOK_SECRET_KEY is not set: webhook endpoints cannot be created nor delivered to until it is')
    }
    if (embedded !== undefined || config.MIGRATE_ON_START) {
      const result = await migrate(ownerUrl, { log, tls })
      if (result.applied.length > 0) log(`applied ${result.applied.length} migration(s)`)
    }
    await assertSafeDatabase(appUrl, tls, lineFailureLog(log))
    // The worker's own connection, when it is another login, is held to the same checks.
    const workerUrl = config.WORKER_DATABASE_URL ?? config.DB_LISTEN_URL
    if (config.RUN_WORKER && workerUrl !== undefined && workerUrl !== appUrl) {
      await assertSafeDatabase(workerUrl, tls, lineFailureLog(log))
    }
    // A sharded table without a partition for a live shard would fail that shard's tenants' writes
    // (and the export, move or erasure of them) at run time: refuse now instead.
    await assertShardPartitions(ownerUrl, tls)
    await sweepAtStartUp(ownerUrl, tls, log)
    const resolved: ResolvedConfig = {
      ...config,
      DATABASE_URL: ownerUrl,
      APP_DATABASE_URL: appUrl,
      ADMIN_TOKEN: adminToken,
      jwt: jwtSettings(config, devJwtSecret),
      databaseTls: tls,
    }
    resolved.EXPORT_SIGNING_KEY = exportSigningKey
    resolved.WEBHOOK_SECRET_KEY = webhookSecretKey
    return { config: resolved, embedded, adminTokenFile, jwtSecretFile }
  } catch (error) {
    await embedded?.stop()
    throw tlsFailure(error, tls) ?? error
  }
}

/**
 * Where the worker runs elsewhere, /metrics still shows the queue (its depth and oldest job: read from the
 * database); the counters of jobs run stay with the workers' logs.
 */
export function queueGaugesOnly (app: FastifyInstance): undefined {
  registerQueueGauges(app.dbPool, app.metrics)
  return undefined
}

/** prepare(), then build the app (one process serving) and, unless RUN_WORKER is off, the job worker beside it. */
export async function start (config: Config, options: StartOptions = {}): Promise<Started> {
  const prepared = await prepare(config, options)
  let app: FastifyInstance
  try {
    app = await buildApp(prepared.config)
  } catch (error) {
    await prepared.embedded?.stop()
    throw error
  }
  let worker: RunningWorker | undefined
  try {
    worker = prepared.config.RUN_WORKER
      ? await startJobWorker(prepared.config, app.log.child({ component: 'worker' }), app.metrics)
      : queueGaugesOnly(app)
  } catch (error) {
    await app.close()
    await prepared.embedded?.stop()
    throw error
  }
  const stop = async (): Promise<void> => {
    try {
      // Requests and jobs finish side by side; both need the database, which stops last.
      await Promise.all([app.close(), worker?.stop()])
    } finally {
      await prepared.embedded?.stop()
    }
  }
  return { ...prepared, app, stop }
}
