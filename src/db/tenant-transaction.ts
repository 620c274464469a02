import {
  Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler,
  type CompiledQuery, type DatabaseConnection, type Driver, type QueryResult,
} from 'kysely'
import type pg from 'pg'
import type { DB } from './schema.ts'

/** Salt of the per-tenant advisory lock (see placement.ts: tenantLockKey). */
export const TENANT_LOCK_SALT = 7301

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * Binds the tenant for the transaction: `set_config(..., true)` is transaction-local, so the binding
 * ends with COMMIT or ROLLBACK and a pooled connection can never carry a tenant into the next
 * request. The same statement takes the tenant's lock in shared mode until the transaction ends
 * (placement moves and erasure take it exclusively); it comes before any read of the tenant's
 * placement, because a statement's snapshot is taken before it waits for a lock.
 */
export const BIND_SQL = `SELECT set_config('app.current_tenant_id', $1, true),
                         pg_advisory_xact_lock_shared(hashtextextended($1::text, ${TENANT_LOCK_SALT}))`

/** Kysely's view of one pg client: every query of a tenant transaction runs on that connection. */
class ClientConnection implements DatabaseConnection {
  readonly #client: pg.ClientBase
  constructor (client: pg.ClientBase) { this.#client = client }

  async executeQuery<R> (query: CompiledQuery): Promise<QueryResult<R>> {
    const { command, rowCount, rows } = await this.#client.query(query.sql, [...query.parameters])
    const changed = command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE'
    return { rows: rows as R[], ...(changed && { numAffectedRows: BigInt(rowCount ?? 0) }) }
  }

  async * streamQuery<R> (): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('streaming is not available inside a tenant transaction')
  }
}

class ClientDriver implements Driver {
  readonly #connection: ClientConnection
  constructor (client: pg.ClientBase) { this.#connection = new ClientConnection(client) }
  async init (): Promise<void> {}
  async acquireConnection (): Promise<DatabaseConnection> { return this.#connection }
  // The transaction is ours (TenantTransaction), never Kysely's.
  async beginTransaction (): Promise<void> { throw new Error('nested transactions are not supported') }
  async commitTransaction (): Promise<void> { throw new Error('use TenantTransaction.commit') }
  async rollbackTransaction (): Promise<void> { throw new Error('use TenantTransaction.rollback') }
  async releaseConnection (): Promise<void> {}
  async destroy (): Promise<void> {}
}

/** One Kysely per pooled connection, built once and reused by every transaction on that connection. */
const kyselyByClient = new WeakMap<pg.ClientBase, Kysely<DB>>()

function kyselyFor (client: pg.ClientBase): Kysely<DB> {
  let db = kyselyByClient.get(client)
  if (db === undefined) {
    db = new Kysely<DB>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => new ClientDriver(client),
        createIntrospector: (k) => new PostgresIntrospector(k),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    })
    kyselyByClient.set(client, db)
  }
  return db
}

/** A transaction bound to one tenant, on one pooled connection: only that tenant's rows exist in it. */
export class TenantTransaction {
  readonly client: pg.PoolClient
  /** Kysely on this transaction's connection. */
  readonly db: Kysely<DB>
  readonly readOnly: boolean
  #finished = false

  constructor (client: pg.PoolClient, readOnly: boolean) {
    this.client = client
    this.db = kyselyFor(client)
    this.readOnly = readOnly
  }

  get finished (): boolean { return this.#finished }

  /**
   * COMMIT and release. A failed COMMIT is rethrown (the caller must not report success) and the
   * connection is discarded rather than returned to the pool in an unknown state.
   */
  async commit (): Promise<void> {
    if (this.#finished) return
    this.#finished = true
    try {
      await this.client.query('COMMIT')
    } catch (error) {
      this.client.release(error as Error)
      throw error
    }
    this.client.release()
  }

  /** ROLLBACK and release; never throws (a connection that cannot roll back is discarded). */
  async rollback (): Promise<void> {
    if (this.#finished) return
    this.#finished = true
    try {
      await this.client.query('ROLLBACK')
      this.client.release()
    } catch (error) {
      this.client.release(error as Error)
    }
  }
}

export interface BeginOptions {
  /** BEGIN READ ONLY: the transaction can write nothing, whatever the handler does. */
  readOnly?: boolean
  /** A first query, sent in the same round trip as BEGIN and the binding (e.g. the credential check). */
  first?: CompiledQuery
}

/**
 * Checks a connection out of the pool and opens a tenant transaction. On a pool created with
 * `pipeline: true` (the runtime pool), BEGIN, the tenant binding and the optional first query go to
 * the server together and cost one round trip. Returns the first query's rows.
 */
export async function beginTenantTransaction (
  pool: pg.Pool,
  tenantId: string,
  options: BeginOptions = {}
): Promise<{ trx: TenantTransaction, rows: unknown[] }> {
  if (!UUID.test(tenantId)) throw new TypeError('tenant id must be a UUID')
  const client = await pool.connect()
  const trx = new TenantTransaction(client, options.readOnly === true)
  const sent = [
    client.query(options.readOnly === true ? 'BEGIN READ ONLY' : 'BEGIN'),
    client.query(BIND_SQL, [tenantId]),
    ...(options.first !== undefined ? [client.query(options.first.sql, [...options.first.parameters])] : []),
  ]
  const settled = await Promise.allSettled(sent)
  const failure = settled.find((s) => s.status === 'rejected')
  if (failure !== undefined) {
    await trx.rollback()
    throw failure.reason
  }
  const first = settled[2]
  return { trx, rows: first?.status === 'fulfilled' ? first.value.rows : [] }
}

/** Runs `work` in a tenant transaction: COMMIT when it resolves, ROLLBACK when it throws. */
export async function withTenantTransaction<T> (pool: pg.Pool, tenantId: string, work: (trx: TenantTransaction) => Promise<T>): Promise<T> {
  const { trx } = await beginTenantTransaction(pool, tenantId)
  let result: T
  try {
    result = await work(trx)
  } catch (error) {
    await trx.rollback()
    throw error
  }
  await trx.commit()
  return result
}
