import type { FastifyBaseLogger } from 'fastify'
import { makeWorkerUtils } from 'graphile-worker'
import type pg from 'pg'
import type { Registry } from 'prom-client'
import type { ResolvedConfig } from '../config.ts'
import { createPool } from '../db/database.ts'
import { logFailure } from '../log-failure.ts'
import { deleteExpiredEvents } from '../tenancy/event-retention.ts'
import { deleteExpiredExports } from '../tenancy/export-retention.ts'
import { webhookSettings } from '../webhooks/settings.ts'
import { deliverWebhookJob } from './deliver-webhook-job.ts'
import { JobMetrics } from './job-metrics.ts'
import { queueLogger } from './queue-logger.ts'
import { runTenantExport } from './tenant-export-job.ts'
import { startWorker, type RunningWorker } from './worker.ts'
import { closeUsagePeriods } from '../limits/period-close.ts'
import { defaultLimits, quotaDefaultsSetting, type LimitsConfig } from '../limits/limits.ts'

export const MAINTENANCE_TASK = 'maintenance_sweep'
const MAINTENANCE_EVERY_MS = 3_600_000

/** What the worker needs: the runtime role's URL always, the owner's only for the maintenance task. */
export type JobWorkerConfig = Pick<ResolvedConfig, 'APP_DATABASE_URL' | 'databaseTls' | 'DB_CONNECT_TIMEOUT_MS' |
  'DB_PREPARED_STATEMENTS' | 'WORKER_CONCURRENCY' | 'WORKER_LEASE_MS' | 'WORKER_SHUTDOWN_GRACE_MS' |
  'EVENT_RETENTION_DAYS' | 'DB_LISTEN_URL' | 'WORKER_DATABASE_URL' | 'WORKER_POLL_INTERVAL_MS'> & LimitsConfig &
  Parameters<typeof webhookSettings>[0] & { DATABASE_URL?: string | undefined }

/**
 * The job worker as `npm start` and `npm run worker` run it: its own pool of direct connections as the
 * runtime role, the tenant tasks (webhook deliveries, exports) and, when the owner's URL is known,
 * the hourly maintenance sweep (event retention, expired exports), which it schedules itself.
 */
export async function startJobWorker (
  config: JobWorkerConfig, log: FastifyBaseLogger, registry?: Registry
): Promise<RunningWorker> {
  const pool = createPool({
    connectionString: config.WORKER_DATABASE_URL ?? config.DB_LISTEN_URL ?? config.APP_DATABASE_URL,
    tls: config.databaseTls,
    // A job holds a connection only for its short transactions (never while it waits on a webhook), so
    // a few serve every slot; the queue adds its LISTEN. Idle slots poll through the same few.
    max: Math.min(config.WORKER_CONCURRENCY, 4) + 2,
    // Slots wait their turn for a connection rather than fail: nobody is waiting on a job's answer.
    connectTimeoutMs: Math.max(config.DB_CONNECT_TIMEOUT_MS, 30_000),
    applicationName: 'rowfence-worker',
    onIdleError: logFailure(log, 'an idle worker connection'),
    preparedStatements: config.DB_PREPARED_STATEMENTS,
  })
  const owner = config.DATABASE_URL === undefined
    ? undefined
    : createPool({
      connectionString: config.DATABASE_URL,
      tls: config.databaseTls,
      max: 2,
      connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
      applicationName: 'rowfence-maintenance',
      onIdleError: logFailure(log, 'an idle maintenance connection'),
      preparedStatements: false,
    })
  let worker: RunningWorker | undefined
  try {
    const metrics = new JobMetrics(pool, registry)
    worker = await startWorker({
      pool,
      log,
      concurrency: config.WORKER_CONCURRENCY,
      leaseMs: config.WORKER_LEASE_MS,
      shutdownGraceMs: config.WORKER_SHUTDOWN_GRACE_MS,
      pollIntervalMs: config.WORKER_POLL_INTERVAL_MS,
      quotaDefaults: quotaDefaultsSetting(defaultLimits(config)),
      metrics,
      tenantTasks: {
        deliver_webhook: { handler: deliverWebhookJob(webhookSettings(config), metrics), flag: 'webhooks', share: 4 },
        tenant_export: { handler: runTenantExport, flag: 'exports', share: 1 },
      },
      ...(owner !== undefined && {
        systemTasks: { [MAINTENANCE_TASK]: async (jobLog) => { await maintenance(owner, config, jobLog) } },
      }),
    })
    if (owner !== undefined) await scheduleMaintenance(owner, log, 0)
  } catch (error) {
    await worker?.stop().catch(logFailure(log, 'stopping the job worker'))
    await Promise.all([pool.end(), owner?.end()])
    throw error
  }
  const started = worker
  // Inside the server nobody awaits it: a runner that dies says so (npm run worker exits on it).
  started.done.catch(logFailure(log, 'the job worker (no jobs run in this process until it restarts)'))
  return {
    ...started,
    stop: async () => {
      try {
        await started.stop()
      } finally {
        await Promise.all([pool.end(), owner?.end()])
      }
    },
  }
}

/**
 * Enqueues the next sweep, as the owner (the runtime role cannot add jobs but through
 * enqueue_tenant_job). One job key: instances starting side by side schedule one sweep, not several.
 */
async function scheduleMaintenance (owner: pg.Pool, log: FastifyBaseLogger, inMs: number): Promise<void> {
  const utils = await makeWorkerUtils({ pgPool: owner, logger: queueLogger(log) })
  try {
    await utils.addJob(MAINTENANCE_TASK, {}, {
      jobKey: MAINTENANCE_TASK, jobKeyMode: 'preserve_run_at', runAt: new Date(Date.now() + inMs), maxAttempts: 3,
    })
  } finally {
    await utils.release()
  }
}

async function maintenance (owner: pg.Pool, config: JobWorkerConfig, log: FastifyBaseLogger): Promise<void> {
  const eventsDeleted = await deleteExpiredEvents(owner, config.EVENT_RETENTION_DAYS)
  const exportsDeleted = await deleteExpiredExports(owner)
  const periodsClosed = await closeUsagePeriods(owner)
  log.info({
    event: 'maintenance_sweep',
    events_deleted: eventsDeleted,
    exports_deleted: exportsDeleted,
    usage_periods_closed: periodsClosed,
  }, 'maintenance sweep done')
  await scheduleMaintenance(owner, log, MAINTENANCE_EVERY_MS)
}
