import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import type { RowfencePoolConfig } from './client-driver.ts'
import type { DB } from './schema.ts'
import { connectionOptions, type DatabaseTls } from './tls.ts'

export type Database = Kysely<DB>

// DATE columns stay 'YYYY-MM-DD' strings: the driver's default turns them into a Date at local
// midnight, which shifts the day in any time zone west of UTC.
pg.types.setTypeParser(pg.types.builtins.DATE, (value: string) => value)

export interface PoolOptions {
  connectionString: string
  /** TLS of every connection of the pool (required: no pool is made without a decision on TLS). */
  tls: DatabaseTls
  max: number
  connectTimeoutMs: number
  applicationName: string
  /** Called when an idle pooled connection fails (the pool has already discarded it). */
  onIdleError: (error: Error) => void
  /** Named prepared statements in tenant transactions (DB_PREPARED_STATEMENTS). */
  preparedStatements: boolean
  /**
   * Pipeline mode: queries issued without waiting go to the server at once (BEGIN, the tenant
   * binding and the credential check of a request cost one round trip). Not for cursors.
   */
  pipeline?: boolean
}

export function createPool (options: PoolOptions): pg.Pool {
  const config: RowfencePoolConfig = {
    ...connectionOptions(options.connectionString, options.tls),
    max: options.max,
    // Waiting for a connection (to open, or to be freed by another request) fails after this long
    // instead of queueing forever; the error handler turns it into a 503.
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: options.applicationName,
    preparedStatements: options.preparedStatements,
    ...(options.pipeline === true && { pipeline: true }),
  }
  const pool = new pg.Pool(config)
  // An idle client whose server connection dies emits 'error' on the pool; without a listener that
  // would crash the process. The pool discards the client, and the next checkout opens a new one.
  pool.on('error', options.onIdleError)
  // A checked-out client whose connection dies (a server restart, a terminated backend) emits
  // 'error' on itself, and the pool listens only while the client is idle: without this the process
  // would crash. The error also reaches every query in flight on it, so the request that holds the
  // client fails (503) and releases it with the error, which discards it: nothing is lost here.
  pool.on('connect', (client) => { client.on('error', () => {}) })
  return pool
}

/** Sees each statement sent on a runtime connection: its SQL and its parameter values. */
export type QueryListener = (sql: string, values: readonly unknown[]) => void

export interface PoolTraffic {
  /** Statements sent. */
  statements: number
  /** Round trips: a statement sent while none is in flight on its connection starts one; statements
   * pipelined behind it ride along. */
  roundTrips: number
}

export function createDatabase (pool: pg.Pool): Database {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
}

/**
 * Calls `listener` with the text of every statement any connection of the pool sends (Kysely's,
 * raw ones, BEGIN and COMMIT alike): the round-trip counter of /metrics, and the tests' audit of
 * tenant predicates, see the same traffic.
 */
export function observePool (pool: pg.Pool, traffic: PoolTraffic, listener?: QueryListener): void {
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    let inFlight = 0
    ;(client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
      const first = args[0]
      if (listener !== undefined) {
        const config = typeof first === 'string'
          ? { text: first, values: args[1] }
          : first as { text?: string, values?: unknown } | undefined
        listener(config?.text ?? '', Array.isArray(config?.values) ? config.values : [])
      }
      traffic.statements++
      if (inFlight === 0) traffic.roundTrips++
      inFlight++
      const result = query(...args)
      if (result instanceof Promise) {
        result.then(() => { inFlight-- }, () => { inFlight-- })
      } else {
        inFlight-- // callback or submittable query: not counted as pipelined
      }
      return result
    }
  })
}
