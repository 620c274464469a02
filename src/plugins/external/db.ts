import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type pg from 'pg'
import {
  createDatabase, createPool, observePool, type Database, type PoolTraffic, type QueryListener,
} from '../../db/database.ts'
import { loadTenantTables, type TenantTables } from '../../db/tenant-scope.ts'
import type { TransactionTimeouts } from '../../db/tenant-transaction.ts'
import { tlsFailure, type DatabaseTls } from '../../db/tls.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Runtime connection (role `app`, subject to RLS): tenant requests. */
    db: Database
    dbPool: pg.Pool
    /** Owner connection: the operator API only (provisioning, and later export and erasure). */
    ownerDb: Database
    ownerPool: pg.Pool
    /** Statements and round trips sent on the runtime connections (for /metrics and the benchmark). */
    dbTraffic: PoolTraffic
    /** Tenant tables and which of them are sharded, read from the catalog when the app starts. */
    tenantTables: TenantTables
    /** Bounds of every tenant request's use of the database. */
    dbLimits: DbLimits
  }
}

export interface DbLimits {
  /** Requests that may wait for a runtime connection; more are refused at once (503). */
  maxWaiting: number
  /** Transaction-local statement and idle-in-transaction timeouts. */
  timeouts: TransactionTimeouts
  /** A tenant request still running after this long is cancelled and answered 503. */
  deadlineMs: number
}

export interface DbPluginOptions {
  appDatabaseUrl: string
  ownerDatabaseUrl: string
  /** TLS of the runtime and owner pools alike. */
  tls: DatabaseTls
  poolMax: number
  operatorPoolMax: number
  connectTimeoutMs: number
  /** Named prepared statements on both pools (DB_PREPARED_STATEMENTS). */
  preparedStatements: boolean
  /** Sees every statement the runtime connections send (tests audit the scoping with it). */
  onQuery?: QueryListener | undefined
  limits: DbLimits
}

async function dbPlugin (fastify: FastifyInstance, options: DbPluginOptions): Promise<void> {
  let closing = false
  const onIdleError = (role: string) => (error: Error & { code?: string }): void => {
    if (closing) return // connections ended by our own shutdown, or the server's
    // Only the message and code: pg's error carries its client (with the connection's cancel key).
    const err = { message: error.message, code: error.code }
    // 57P01: the server is shutting down (a restart, or the embedded server stopped with us on Ctrl-C).
    if (error.code === '57P01') {
      fastify.log.info({ err, role }, 'the database server closed an idle connection; it was discarded')
    } else {
      fastify.log.warn({ err, role }, 'an idle database connection failed and was discarded')
    }
  }
  const appPool = createPool({
    connectionString: options.appDatabaseUrl,
    tls: options.tls,
    max: options.poolMax,
    connectTimeoutMs: options.connectTimeoutMs,
    applicationName: 'rowfence',
    onIdleError: onIdleError('app'),
    preparedStatements: options.preparedStatements,
    pipeline: true,
  })
  const ownerPool = createPool({
    connectionString: options.ownerDatabaseUrl,
    tls: options.tls,
    max: options.operatorPoolMax,
    connectTimeoutMs: options.connectTimeoutMs,
    applicationName: 'rowfence-operator',
    onIdleError: onIdleError('owner'),
    preparedStatements: options.preparedStatements,
  })
  fastify.decorate('dbPool', appPool)
  const traffic: PoolTraffic = { statements: 0, roundTrips: 0 }
  observePool(appPool, traffic, options.onQuery)
  fastify.decorate('dbTraffic', traffic)
  fastify.decorate('db', createDatabase(appPool))
  fastify.decorate('ownerDb', createDatabase(ownerPool))
  fastify.decorate('ownerPool', ownerPool)
  fastify.decorate('tenantTables', new Map())
  fastify.decorate('dbLimits', options.limits)
  fastify.addHook('onReady', async () => {
    // The first connection of the app: a TLS misconfiguration surfaces here, said in one line.
    fastify.tenantTables = await loadTenantTables(appPool)
      .catch((error: unknown) => { throw tlsFailure(error, options.tls) ?? error })
  })
  fastify.addHook('onClose', async () => {
    closing = true
    // Kysely.destroy() ends the pg pool it wraps.
    await Promise.all([fastify.db.destroy(), fastify.ownerDb.destroy()])
  })
}

export default fp(dbPlugin, { name: 'db' })
