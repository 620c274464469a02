import type pg from 'pg'

/** The server is at capacity: this many requests already wait for a connection. */
export class PoolSaturated extends Error {
  override name = 'PoolSaturated'
}

/**
 * A bounded queue: past it, a request is refused at once (PoolSaturated, answered 503) instead of
 * waiting its turn while latency and memory grow without bound.
 */
export function assertPoolQueue (pool: pg.Pool, maxWaiting: number | undefined): void {
  if (maxWaiting === undefined || pool.idleCount > 0) return
  // pg's own default pool size, for a pool made without `max`.
  if (pool.totalCount >= (pool.options.max ?? 10) && pool.waitingCount >= maxWaiting) {
    throw new PoolSaturated(`${pool.waitingCount} requests already wait for a database connection`)
  }
}
