import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type pg from 'pg'
import { createDatabase, createPool, type Database } from '../../db/database.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Runtime connection (role `app`, subject to RLS): tenant requests. */
    db: Database
    dbPool: pg.Pool
    /** Owner connection: the operator API only (provisioning, and later export and erasure). */
    ownerDb: Database
  }
}

export interface DbPluginOptions {
  appDatabaseUrl: string
  ownerDatabaseUrl: string
  poolMax: number
  operatorPoolMax: number
  connectTimeoutMs: number
}

async function dbPlugin (fastify: FastifyInstance, options: DbPluginOptions): Promise<void> {
  const onIdleError = (role: string) => (error: Error): void => {
    fastify.log.warn({ err: error, role }, 'an idle database connection failed and was discarded')
  }
  const appPool = createPool({
    connectionString: options.appDatabaseUrl,
    max: options.poolMax,
    connectTimeoutMs: options.connectTimeoutMs,
    applicationName: 'rowfence',
    onIdleError: onIdleError('app'),
  })
  const ownerPool = createPool({
    connectionString: options.ownerDatabaseUrl,
    max: options.operatorPoolMax,
    connectTimeoutMs: options.connectTimeoutMs,
    applicationName: 'rowfence-operator',
    onIdleError: onIdleError('owner'),
  })
  fastify.decorate('dbPool', appPool)
  fastify.decorate('db', createDatabase(appPool))
  fastify.decorate('ownerDb', createDatabase(ownerPool))
  fastify.addHook('onClose', async () => {
    // Kysely.destroy() ends the pg pool it wraps.
    await Promise.all([fastify.db.destroy(), fastify.ownerDb.destroy()])
  })
}

export default fp(dbPlugin, { name: 'db' })
