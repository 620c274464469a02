import type { WorkerEvents } from 'graphile-worker'
import type pg from 'pg'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

export type DeliveryOutcome = 'succeeded' | 'failed' | 'refused' | 'gave_up'

interface QueueRow { task: string, ready: string, scheduled: string, running: string, oldest_ready_s: number | null }

/**
 * The asynchronous path's metrics. Labels are the task and the outcome only: never a tenant, an
 * endpoint or a job, so their number does not grow with the tenants.
 */
export class JobMetrics {
  readonly registry: Registry
  readonly #jobs: Counter
  readonly #jobSeconds: Histogram
  readonly #deliveries: Counter
  readonly #deliverySeconds: Histogram

  constructor (pool: pg.Pool, registry: Registry = new Registry()) {
    this.registry = registry
    const registers = [registry]
    this.#jobs = new Counter({
      name: 'rowfence_jobs_total', help: 'jobs run, by task and outcome', labelNames: ['task', 'outcome'], registers,
    })
    this.#jobSeconds = new Histogram({
      name: 'rowfence_job_duration_seconds',
      help: 'job run time, by task',
      labelNames: ['task'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120],
      registers,
    })
    this.#deliveries = new Counter({
      name: 'rowfence_webhook_deliveries_total',
      help: 'webhook delivery attempts, by outcome (refused: the target address is not allowed; ' +
        'gave_up: the last attempt failed)',
      labelNames: ['outcome'],
      registers,
    })
    this.#deliverySeconds = new Histogram({
      name: 'rowfence_webhook_delivery_latency_seconds',
      help: 'webhook attempt latency (request sent to response read), by outcome',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    })
    registerQueueGauges(pool, registry)
  }

  observe (events: WorkerEvents): void {
    const started = new Map<string, number>()
    events.on('job:start', ({ job }) => { started.set(job.id, performance.now()) })
    events.on('job:complete', ({ job, error }) => {
      const task = job.task_identifier
      this.#jobs.inc({ task, outcome: error === null || error === undefined ? 'succeeded' : 'failed' })
      const t0 = started.get(job.id)
      started.delete(job.id)
      if (t0 !== undefined) this.#jobSeconds.observe({ task }, (performance.now() - t0) / 1000)
    })
  }

  delivery (outcome: DeliveryOutcome, seconds: number | null): void {
    this.#deliveries.inc({ outcome })
    if (seconds !== null) this.#deliverySeconds.observe({ outcome }, seconds)
  }
}

/**
 * The queue as it stands, read from the database on each scrape: jobs by task and state, and how long the
 * oldest ready one has waited. Any instance can show them, whether or not it runs a worker.
 */
export function registerQueueGauges (pool: pg.Pool, registry: Registry): void {
  // Read from the queue on each scrape: one aggregate over the jobs table, shared by both gauges.
  let scrape: Promise<QueueRow[]> | undefined
  const queue = async (): Promise<QueueRow[]> => {
    scrape ??= pool.query<QueueRow>(`
      SELECT t.identifier AS task,
             count(*) FILTER (WHERE j.locked_at IS NULL AND j.run_at <= now()) AS ready,
             count(*) FILTER (WHERE j.locked_at IS NULL AND j.run_at > now()) AS scheduled,
             count(*) FILTER (WHERE j.locked_at IS NOT NULL) AS running,
             extract(epoch FROM now() - min(j.run_at)
               FILTER (WHERE j.locked_at IS NULL AND j.run_at <= now()))::float8
               AS oldest_ready_s
        FROM graphile_worker._private_jobs j JOIN graphile_worker._private_tasks t ON t.id = j.task_id
       WHERE j.attempts < j.max_attempts
       GROUP BY t.identifier`).then((r) => r.rows).finally(() => { setImmediate(() => { scrape = undefined }) })
    return scrape
  }
  registry.registerMetric(new Gauge({
    name: 'rowfence_job_queue_depth',
    help: 'jobs in the queue by task and state (ready to run, scheduled for later, running)',
    labelNames: ['task', 'state'],
    registers: [],
    async collect () {
      this.reset()
      for (const row of await queue()) {
        this.set({ task: row.task, state: 'ready' }, Number(row.ready))
        this.set({ task: row.task, state: 'scheduled' }, Number(row.scheduled))
        this.set({ task: row.task, state: 'running' }, Number(row.running))
      }
    },
  }))
  registry.registerMetric(new Gauge({
    name: 'rowfence_job_queue_oldest_ready_seconds',
    help: 'how long the oldest job ready to run has waited, by task',
    labelNames: ['task'],
    registers: [],
    async collect () {
      this.reset()
      for (const row of await queue()) this.set({ task: row.task }, row.oldest_ready_s ?? 0)
    },
  }))
}
