import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import { run, type Runner, type Task, type WorkerEvents, type WorkerPool } from 'graphile-worker'
import type pg from 'pg'
import { logFailure } from '../log-failure.ts'
import type { JobMetrics } from './job-metrics.ts'
import { queueLogger } from './queue-logger.ts'
import type { TenantJobHandler } from './types.ts'
import { WorkerLease } from './worker-lease.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

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
  /**
   * Tenant jobs by task name: their payload is {tenant_id, ref}; `share` is how many of this worker's
   * slots one tenant may hold at once for the task (sql/0019 flags each job `<flag>:<tenant>`).
   */
  tenantTasks: Record<string, { handler: TenantJobHandler, flag: string, share: number }>
  /** Jobs with no tenant (the maintenance sweep): only where an owner connection is configured. */
  systemTasks?: Record<string, (log: FastifyBaseLogger) => Promise<void>>
  /** Job and queue metrics (registered where the caller chose: the server's /metrics). */
  metrics: JobMetrics
  /** Fallback poll for jobs scheduled in the future (new ones arrive by NOTIFY at once). */
  pollIntervalMs?: number
  /**
   * The configured default quotas, handed to each job (JobContext.quotaDefaults): a metered write of the
   * runtime role without them is refused (sql/0021).
   */
  quotaDefaults: string
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
  // Per-tenant fairness: the jobs running here by flag; a tenant at its share has its flag skipped
  // when the next job is fetched, so the slots left go to other tenants' jobs, in queue order.
  const running = new Map<string, { count: number, share: number }>()
  const forbiddenFlags = (): string[] =>
    [...running].filter(([, r]) => r.count >= r.share).map(([flag]) => flag)
  const taskList: Record<string, Task> = {}
  for (const [name, { handler, flag, share }] of Object.entries(options.tenantTasks)) {
    taskList[name] = async (payload, helpers) => {
      const refs = tenantPayload(payload)
      if (refs === undefined) {
        // Never retried: no run of it could bind a tenant. Only the owner can write such a job.
        log.error({ event: 'job_malformed', job: helpers.job.id, task: name }, 'job payload is not {tenant_id, ref}')
        return
      }
      const jobLog = log.child({ tenant: refs.tenantId, job: helpers.job.id, task: name, ref: refs.ref })
      const key = `${flag}:${refs.tenantId}`
      const held = running.get(key) ?? { count: 0, share }
      held.count++
      running.set(key, held)
      const run = handler(
        { ...refs, jobId: helpers.job.id, attempt: helpers.job.attempts, maxAttempts: helpers.job.max_attempts },
        { pool, log: jobLog, signal: helpers.abortSignal, quotaDefaults: options.quotaDefaults })
      inFlight.add(run)
      try {
        await run
      } finally {
        inFlight.delete(run)
        if (--held.count === 0) running.delete(key)
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
    forbiddenFlags,
    gracefulShutdownAbortTimeout: options.shutdownGraceMs,
  })
  try {
    await Promise.all(tracked)
  } catch (error) {
    // Nothing is left running when start-up fails: the caller ends the pool next.
    await runner.stop('start-up failed').catch(logFailure(log, 'stopping the job runner'))
    await lease.release().catch(logFailure(log, 'releasing the worker lease'))
    throw error
  }
  log.info({ event: 'worker_started', concurrency: options.concurrency, tasks: Object.keys(taskList) },
    'job worker started')

  let stopping: Promise<void> | undefined
  const stop = async (): Promise<void> => {
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
    await lease.release()
    log.info({ event: 'worker_stopped' }, 'job worker stopped')
  }
  return {
    stop: () => (stopping ??= stop()),
    done: runner.promise,
    metrics,
  }
}
