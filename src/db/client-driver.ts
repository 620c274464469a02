import {
  Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler,
  type CompiledQuery, type DatabaseConnection, type Driver, type KyselyPlugin, type PluginTransformQueryArgs,
  type PluginTransformResultArgs, type QueryResult, type RootOperationNode, type UnknownRow,
} from 'kysely'
import type pg from 'pg'
import type { DB } from './schema.ts'

/**
 * Kysely on one checked-out pg client, for the tenant transaction (tenant-transaction.ts): the
 * transaction is ours, never Kysely's, and every statement may go out as a named prepared statement.
 */

/** pg.PoolConfig with our own settings; pg keeps unknown options in `pool.options` and ignores them. */
export interface RowfencePoolConfig extends pg.PoolConfig {
  /** Named prepared statements (off behind a PgBouncer older than 1.21 in transaction mode). */
  preparedStatements?: boolean
}

/** Whether statements on this pool's connections are named; pools made outside createPool name them. */
export function usesPreparedStatements (pool: pg.Pool): boolean {
  return (pool.options as RowfencePoolConfig).preparedStatements !== false
}

/**
 * Named prepared statements: the same SQL text always gets the same name, so each pooled connection
 * parses (and plans, for plan-cacheable statements) the routes' statements once. The set of texts is
 * small (one per query shape); past the cap, statements are sent unnamed. The names are a pure
 * function of the texts seen, so one table serves every pool (each connection prepares on first use).
 */
const statementNames = new Map<string, string>()
const MAX_NAMED_STATEMENTS = 2000

export function statement (text: string, values: unknown[], prepared: boolean): pg.QueryConfig {
  if (!prepared) return { text, values }
  let name = statementNames.get(text)
  if (name === undefined && statementNames.size < MAX_NAMED_STATEMENTS) {
    name = `rowfence_${statementNames.size}`
    statementNames.set(text, name)
  }
  return name === undefined ? { text, values } : { name, text, values }
}

/** What the connection asks of the tenant transaction open on it. */
export interface ConnectionTransaction {
  /** Throws when no statement may be sent now. */
  beforeQuery: () => void
  /** Right after a statement was sent. */
  afterQuery: () => void
  /** Set once the transaction was aborted from outside: the error its statements fail with. */
  readonly abortReason: Error | undefined
  /** Settles when the binding has been answered and accepted. */
  readonly confirmed: Promise<void>
}

/** Kysely's view of one pg client: every query of a tenant transaction runs on that connection. */
export class ClientConnection implements DatabaseConnection {
  readonly #client: pg.ClientBase
  readonly #prepared: boolean
  /** The tenant transaction currently open on this connection. */
  transaction: ConnectionTransaction | null = null
  /** Statements sent and not yet answered. */
  inFlight = 0
  constructor (client: pg.ClientBase, prepared: boolean) {
    this.#client = client
    this.#prepared = prepared
  }

  async executeQuery<R> (query: CompiledQuery): Promise<QueryResult<R>> {
    const transaction = this.transaction
    transaction?.beforeQuery()
    const pending = this.#client.query(statement(query.sql, [...query.parameters], this.#prepared))
    this.inFlight++
    transaction?.afterQuery()
    let result: pg.QueryResult
    try {
      result = await pending
    } catch (error) {
      // Cancelled by abort(): the reason is what happened, not "canceling statement".
      if (transaction?.abortReason !== undefined) throw transaction.abortReason
      // A statement pipelined behind a binding that failed or was refused fails with "current
      // transaction is aborted"; the binding's own error is the one worth reporting.
      await transaction?.confirmed
      throw error
    } finally {
      this.inFlight--
    }
    // No result reaches the handler before the binding's answer has been confirmed (it is in
    // already: the server answers in order).
    await transaction?.confirmed
    const { command, rowCount, rows } = result
    const changed = command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE'
    return { rows: rows as R[], ...(changed && { numAffectedRows: BigInt(rowCount ?? 0) }) }
  }

  async * streamQuery<R> (): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('streaming is not available inside a tenant transaction')
  }
}

class ClientDriver implements Driver {
  readonly #connection: ClientConnection
  constructor (connection: ClientConnection) { this.#connection = connection }
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
const kyselyByClient = new WeakMap<pg.ClientBase, { db: Kysely<DB>, connection: ClientConnection }>()

export function kyselyFor (client: pg.ClientBase, prepared: boolean): { db: Kysely<DB>, connection: ClientConnection } {
  let entry = kyselyByClient.get(client)
  if (entry === undefined) {
    const connection = new ClientConnection(client, prepared)
    const db = new Kysely<DB>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => new ClientDriver(connection),
        createIntrospector: (k) => new PostgresIntrospector(k),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    })
    entry = { db, connection }
    kyselyByClient.set(client, entry)
  }
  return entry
}

/**
 * Refuses any statement once its transaction has ended. Kysely instances handed out for a
 * transaction share the pooled connection, which another request owns after the release: a handler
 * that outlived its transaction (a request deadline, a bug) must fail, not run inside someone else's.
 */
export class FinishedTransactionGuard implements KyselyPlugin {
  readonly #transaction: { assertOpen: () => void }
  constructor (transaction: { assertOpen: () => void }) { this.#transaction = transaction }
  transformQuery (args: PluginTransformQueryArgs): RootOperationNode {
    this.#transaction.assertOpen()
    return args.node
  }

  async transformResult (args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> { return args.result }
}
