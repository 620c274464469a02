import { sql } from 'kysely'
import pg from 'pg'
import { TENANT_LOCK_SALT } from '../db/tenant-transaction.ts'
import { logFailure, type FailureLog } from '../log-failure.ts'

/**
 * A transaction-level advisory lock per tenant: every tenant transaction holds it shared from its
 * first statement (bind_tenant), placement moves and erasure take it exclusively, so a request never
 * reads a shard that is being moved away under it, and an erasure waits for the tenant's in-flight
 * requests.
 */
export const tenantLockKey = (tenantId: string) =>
  sql<string>`hashtextextended(${tenantId}::text, ${TENANT_LOCK_SALT})`

/** Salt of the per-tenant operation lock (OperationLock): distinct from the request lock. */
export const OPERATION_LOCK_SALT = 7302

/** Another operation (a placement move or an erasure) holds the tenant, or the tenant is being erased. */
export class PlacementBusy extends Error {
  override name = 'PlacementBusy'
}

/**
 * Every tenant operation that changes where a tenant's rows live (a placement move, an erasure, a
 * dedicated onboarding or import) holds this session-level advisory lock for its whole life, on a
 * connection of its own (outside the pool, and outside any transaction, so it can also run
 * DETACH ... CONCURRENTLY). A crashed process's connection closes and the lock goes with it: a
 * tenant marked `moving`, or a shard reserved for it, whose lock can be taken has no live operation
 * behind it, and is recovered.
 */
export class OperationLock {
  readonly client: pg.Client
  readonly tenantId: string
  readonly #log: FailureLog | undefined
  #released = false

  private constructor (client: pg.Client, tenantId: string, log: FailureLog | undefined) {
    this.client = client
    this.tenantId = tenantId
    this.#log = log
  }

  /** The lock, or undefined when another operation on the tenant holds it. `log`: where ending fails. */
  static async tryAcquire (pool: pg.Pool, tenantId: string, log?: FailureLog): Promise<OperationLock | undefined> {
    const client = operationClient(pool)
    await client.connect()
    try {
      const { rows: [row] } = await client.query<{ ok: boolean }>(
        'SELECT pg_try_advisory_lock(hashtextextended($1::text, $2)) AS ok', [tenantId, OPERATION_LOCK_SALT])
      if (row!.ok) return new OperationLock(client, tenantId, log)
    } catch (error) {
      await endOperationClient(client, log)
      throw error
    }
    await endOperationClient(client, log)
    return undefined
  }

  /** Ends the connection, which releases the lock. */
  async release (): Promise<void> {
    if (this.#released) return
    this.#released = true
    await endOperationClient(this.client, this.#log, { tenantId: this.tenantId })
  }
}

/** A connection of its own for an operation, with the pool's settings (outside the pool). */
export function operationClient (pool: pg.Pool): pg.Client {
  const client = new pg.Client({ ...pool.options, application_name: 'rowfence-operation' } as pg.ClientConfig)
  client.on('error', () => {}) // a broken connection surfaces on the next query, which reports it
  return client
}

/**
 * Ends an operation's connection. A failure is logged and goes no further: the connection is gone
 * either way, and the server releases its session locks when it goes.
 */
export async function endOperationClient (
  client: pg.Client, log: FailureLog | undefined, details: Record<string, unknown> = {}
): Promise<void> {
  await client.end().catch(logFailure(log, 'closing an operation connection', details))
}

/** Runs `work` holding the tenant's operation lock; PlacementBusy when another operation holds it. */
export async function withOperationLock<T> (
  pool: pg.Pool, tenantId: string, work: (lock: OperationLock) => Promise<T>, log?: FailureLog
): Promise<T> {
  const lock = await OperationLock.tryAcquire(pool, tenantId, log)
  if (lock === undefined) {
    throw new PlacementBusy('another operation on this tenant (a placement move or an erasure) is in progress')
  }
  try {
    return await work(lock)
  } finally {
    await lock.release()
  }
}
