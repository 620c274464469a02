import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import type { DB } from './schema.ts'

export type Database = Kysely<DB>

// DATE columns stay 'YYYY-MM-DD' strings: the driver's default turns them into a Date at local
// midnight, which shifts the day in any time zone west of UTC.
pg.types.setTypeParser(pg.types.builtins.DATE, (value: string) => value)

export interface PoolOptions {
  connectionString: string
  max: number
  connectTimeoutMs: number
  applicationName: string
  /** Called when an idle pooled connection fails (the pool has already discarded it). */
  onIdleError?: (error: Error) => void
}

export function createPool (options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max,
    // Waiting for a connection (to open, or to be freed by another request) fails after this long
    // instead of queueing forever; the error handler turns it into a 503.
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: options.applicationName,
  })
  // An idle client whose server connection dies emits 'error' on the pool; without a listener that
  // would crash the process. The pool discards the client, and the next checkout opens a new one.
  pool.on('error', options.onIdleError ?? (() => {}))
  return pool
}

export type QueryListener = (sql: string, parameters: readonly unknown[]) => void

export function createDatabase (pool: pg.Pool, onQuery?: QueryListener): Database {
  return new Kysely<DB>({
    dialect: new PostgresDialect({ pool }),
    ...(onQuery !== undefined && {
      log: (event) => { if (event.level === 'query') onQuery(event.query.sql, event.query.parameters) },
    }),
  })
}
