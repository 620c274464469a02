import { hostname } from 'node:os'
import type { FastifyBaseLogger } from 'fastify'
import type pg from 'pg'
import { logFailure } from '../log-failure.ts'

/**
 * Worker liveness. The queue library hands a crashed worker's jobs back only after four hours; we
 * want them retried within a lease. Each worker pool heartbeats in worker_heartbeats; any worker
 * hands back (graphile_worker.force_unlock_workers) the jobs of pools silent for longer than the
 * lease, and of pools that locked jobs but never heartbeat at all. A live pool's long job is never
 * taken from it, however long it runs: its heartbeat goes on, and refreshes its jobs' locks.
 */
export class WorkerLease {
  readonly #pool: pg.Pool
  readonly #log: FastifyBaseLogger
  readonly #leaseMs: number
  readonly #pools = new Set<string>()
  #timer: NodeJS.Timeout | undefined
  #beating: Promise<void> = Promise.resolve()

  constructor (pool: pg.Pool, log: FastifyBaseLogger, leaseMs: number) {
    this.#pool = pool
    this.#log = log
    this.#leaseMs = leaseMs
  }

  /** Starts heartbeating for a worker pool (before it takes any job). */
  async track (poolId: string): Promise<void> {
    this.#pools.add(poolId)
    await this.#pool.query(
      `INSERT INTO worker_heartbeats (pool_id, host, pid) VALUES ($1, $2, $3)
       ON CONFLICT (pool_id) DO UPDATE SET seen_at = now()`,
      [poolId, hostname().slice(0, 255), process.pid])
    // A third of the lease: two beats may be lost (a slow database) before others presume us dead.
    this.#timer ??= setInterval(() => {
      this.#beating = this.beat().catch(logFailure(this.#log, 'worker heartbeat'))
    }, Math.max(100, Math.floor(this.#leaseMs / 3))).unref()
  }

  /** One heartbeat, then one look for dead pools. */
  async beat (): Promise<void> {
    const ids = [...this.#pools]
    // An upsert: a pool presumed dead during a long pause (its row deleted, its jobs handed back)
    // comes back as alive; what it was running may run twice, which at-least-once allows.
    if (ids.length > 0) {
      await this.#pool.query(
        `INSERT INTO worker_heartbeats (pool_id, host, pid) SELECT unnest($1::text[]), $2, $3
         ON CONFLICT (pool_id) DO UPDATE SET seen_at = now()`, [ids, hostname().slice(0, 255), process.pid])
      // The library hands back any job locked for four hours, however alive its worker: a long export
      // would start over every four hours. The lease decides instead, so our running jobs stay fresh.
      await this.#pool.query(
        'UPDATE graphile_worker._private_jobs SET locked_at = now() WHERE locked_by = ANY ($1::text[])', [ids])
    }
    await this.reclaim()
  }

  /** Hands back the jobs of dead pools; returns their ids. */
  async reclaim (): Promise<string[]> {
    const lease = `${this.#leaseMs} milliseconds`
    const { rows } = await this.#pool.query<{ ids: string[] }>(`
      WITH dead AS (
        DELETE FROM worker_heartbeats WHERE seen_at < now() - $1::interval RETURNING pool_id
      ), silent AS (
        SELECT DISTINCT j.locked_by AS pool_id FROM graphile_worker._private_jobs j
         WHERE j.locked_by IS NOT NULL AND j.locked_at < now() - $1::interval
           AND NOT EXISTS (SELECT 1 FROM worker_heartbeats h WHERE h.pool_id = j.locked_by)
      )
      SELECT array(SELECT pool_id FROM dead UNION SELECT pool_id FROM silent) AS ids`, [lease])
    const ids = (rows[0]?.ids ?? []).filter((id) => !this.#pools.has(id))
    if (ids.length > 0) {
      await this.#pool.query('SELECT graphile_worker.force_unlock_workers($1::text[])', [ids])
      this.#log.warn({ event: 'worker_jobs_reclaimed', pools: ids },
        'handed back the jobs of worker pools silent for longer than the lease')
    }
    return ids
  }

  /** Stops heartbeating and removes our pools' rows (after they have released their jobs). */
  async release (): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    await this.#beating
    const ids = [...this.#pools]
    this.#pools.clear()
    if (ids.length > 0) await this.#pool.query('DELETE FROM worker_heartbeats WHERE pool_id = ANY ($1::text[])', [ids])
  }
}
