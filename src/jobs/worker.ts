import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import { makeWorkerUtils, run, type Runner, type Task, type WorkerEvents, type WorkerPool } from 'graphile-worker'
import type pg from 'pg'
import { logFailure } from '../log-failure.ts'
import type { JobMetrics } from './job-metrics.ts'
import { queueLogger } from './queue-logger.ts'
import type { TenantJobHandler } from './types.ts'
import { WorkerLease } from './worker-lease.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** How often emptied per-tenant queues are removed from the queue's bookkeeping (one row per name). */
const QUEUE_GC_MS = 10 * 60_000

export interface WorkerOptions {
  /**
   * Connections as the runtime role `app`, direct (not through a transaction-pooling PgBouncer): the
   * queue LISTENs for new jobs. Jobs bind their tenant on it exactly as requests do.
   */
  pool: pg.Pool
  log: FastifyBaseLogger
  /** Jobs run at once by this process. */
  concurrency: number
  leaseMs: number
  /** SIGTERM: running jobs get this long to finish, then are handed back to the queue. */
  shutdownGraceMs: number
  /** Tenant jobs by task name: their payload is {tenant_id, ref}. */
  tenantTasks: Record<string, TenantJobHandler>
  /** Jobs with no tenant (the maintenance sweep): only where an owner connection is configured. */
  systemTasks?: Record<string, (log: FastifyBaseLogger) => Promise<void>>
  /** Job and queue metrics (registered where the caller chose: the server's /metrics). */
  metrics: JobMetrics
  /** Fallback poll for jobs scheduled in the future (new ones arrive by NOTIFY at once). */
  pollIntervalMs?: number
}

export interface RunningWorker {
  /** Finishes running jobs within the grace period, hands back the rest, and stops. */
  stop: () => Promise<void>
  /** Settles when the runner stops on its own (a fatal error). */
  done: Promise<void>
  metrics: JobMetrics
}

function tenantPayload (payload: unknown): { tenantId: string, ref: string } | undefined {
  if (typeof payload !== 'object' || payload === null) return undefined
  const { tenant_id: tenantId, ref } = payload as Record<string, unknown>
  if (typeof tenantId !== 'string' || typeof ref !== 'string' || !UUID.test(tenantId) || !UUID.test(ref)) {
    return undefined
  }
  return { tenantId, ref }
}

/**
 * Starts the job worker (graphile-worker) on the runtime role's pool. Each tenant job binds the
 * tenant its payload names, in its own transactions, as requests do: a payload naming a row of
 * another tenant finds nothing. Logs carry the tenant, job and ref ids; payloads carry nothing else.
 */
export async function startWorker (options: WorkerOptions): Promise<RunningWorker> {
  const { pool, log } = options
  const { metrics } = options
  const lease = new WorkerLease(pool, log, options.leaseMs)
  const events: WorkerEvents = new EventEmitter()
  const pools: WorkerPool[] = []
  const tracked: Array<Promise<void>> = []
  events.on('pool:create', ({ workerPool }) => {
    pools.push(workerPool)
    const tracking = lease.track(workerPool.id)
    tracking.catch(() => {}) // awaited below, with the others: a failure surfaces there
    tracked.push(tracking)
  })
  metrics.observe(events)

  // Handlers still running when a forceful stop returns their jobs to the queue: the pool outlives them.
  const inFlight = new Set<Promise<void>>()
  const taskList: Record<string, Task> = {}
  for (const [name, handler] of Object.entries(options.tenantTasks)) {
    taskList[name] = async (payload, helpers) => {
      const refs = tenantPayload(payload)
      if (refs === undefined) {
        // Never retried: no run of it could bind a tenant. Only the owner can write such a job.
        log.error({ event: 'job_malformed', job: helpers.job.id, task: name }, 'job payload is not {tenant_id, ref}')
        return
      }
      const jobLog = log.child({ tenant: refs.tenantId, job: helpers.job.id, task: name, ref: refs.ref })
      const running = handler(
        { ...refs, jobId: helpers.job.id, attempt: helpers.job.attempts },
        { pool, log: jobLog, signal: helpers.abortSignal })
      inFlight.add(running)
      try {
        await running
      } finally {
        inFlight.delete(running)
      }
    }
  }
  for (const [name, handler] of Object.entries(options.systemTasks ?? {})) {
    taskList[name] = async (_payload, helpers) => { await handler(log.child({ job: helpers.job.id, task: name })) }
  }

  const runner: Runner = await run({
    pgPool: pool,
    concurrency: options.concurrency,
    noHandleSignals: true,
    pollInterval: options.pollIntervalMs ?? 2000,
    logger: queueLogger(log),
    taskList,
    events,
    gracefulShutdownAbortTimeout: options.shutdownGraceMs,
  })
  let utils: Awaited<ReturnType<typeof makeWorkerUtils>>
  try {
    await Promise.all(tracked)
    utils = await makeWorkerUtils({ pgPool: pool, logger: queueLogger(log) })
  } catch (error) {
    // Nothing is left running when start-up fails: the caller ends the pool next.
    await runner.stop('start-up failed').catch(logFailure(log, 'stopping the job runner'))
    await lease.release().catch(logFailure(log, 'releasing the worker lease'))
    throw error
  }
  const gc = setInterval(() => {
    utils.cleanup({ tasks: ['GC_JOB_QUEUES'] }).catch(logFailure(log, 'removing emptied job queues'))
  }, QUEUE_GC_MS).unref()
  log.info({ event: 'worker_started', concurrency: options.concurrency, tasks: Object.keys(taskList) },
    'job worker started')

  let stopping: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    clearInterval(gc)
    // Jobs still running when the grace period ends are failed back to the queue (retried later).
    let timer: NodeJS.Timeout | undefined
    const graceOver = new Promise<'over'>((resolve) => {
      timer = setTimeout(() => { resolve('over') }, options.shutdownGraceMs)
    })
    const outcome = await Promise.race([runner.stop('shutting down').then(() => 'stopped' as const), graceOver])
    clearTimeout(timer)
    if (outcome === 'over') {
      for (const workerPool of pools) {
        const { forceFailedJobs } = await workerPool.forcefulShutdown('the shutdown grace period ran out')
        if (forceFailedJobs.length > 0) {
          log.warn({ event: 'worker_jobs_handed_back', jobs: forceFailedJobs.map((j) => j.id) },
            'jobs still running at the end of the grace period were handed back to the queue')
        }
      }
      await runner.promise.catch(logFailure(log, 'job worker stop'))
      await Promise.allSettled([...inFlight])
    }
    await utils.release()
    await lease.release()
    log.info({ event: 'worker_stopped' }, 'job worker stopped')
  }
  return {
    stop: () => (stopping ??= stop()),
    done: runner.promise,
    metrics,
  }
}
