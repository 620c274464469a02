import { EventEmitter } from 'node:events'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { CredentialCache } from '../../auth/credential-cache.ts'
import { connectionOptions, tlsFailure, type DatabaseTls } from '../../db/tls.ts'
import { logFailure } from '../../log-failure.ts'

declare module 'fastify' {
  interface FastifyInstance {
    credentialCache: CredentialCache
    /**
     * Resolves once this instance's listener has received `payload` (or after `timeoutMs`): a
     * revocation answers only after its invalidation has gone round.
     */
    awaitAuthNotification: (payload: string, timeoutMs?: number) => Promise<void>
    /**
     * The channel's other listeners (the limits cache): 'notification' with each payload, and 'listening'
     * with whether notifications arrive (false while the listener is lost: changes may be missed).
     */
    authNotifications: EventEmitter<{ notification: [payload: string], listening: [listening: boolean] }>
  }
}

export interface CredentialCacheOptions {
  /** 0 turns the cache off. */
  ttlMs: number
  /** Where to LISTEN: a direct connection (LISTEN does not work through a transaction-pooling PgBouncer). */
  listenUrl: string
  /** TLS of the LISTEN connection (the same as the pools'). */
  tls: DatabaseTls
}

export const AUTH_CHANNEL = 'rowfence_auth'

/**
 * One LISTEN connection per instance feeds the credential cache its invalidations. The cache is on
 * only while the listener is connected; when it drops, the cache is emptied and turned off, and the
 * listener reconnects with backoff.
 */
async function credentialCachePlugin (fastify: FastifyInstance, options: CredentialCacheOptions): Promise<void> {
  const cache = new CredentialCache(options.ttlMs)
  fastify.decorate('credentialCache', cache)
  const waiters = new Map<string, Set<() => void>>()
  const notifications = new EventEmitter<{ notification: [payload: string], listening: [listening: boolean] }>()
  fastify.decorate('authNotifications', notifications)
  fastify.decorate('awaitAuthNotification', async (payload: string, timeoutMs = 2000): Promise<void> => {
    if (!cache.enabled) return // nothing is cached that this instance's listener would have to clear
    await new Promise<void>((resolve) => {
      const set = waiters.get(payload) ?? new Set()
      const done = (): void => {
        clearTimeout(timer)
        set.delete(done)
        if (set.size === 0) waiters.delete(payload)
        resolve()
      }
      const timer = setTimeout(done, timeoutMs)
      set.add(done)
      waiters.set(payload, set)
    })
  })
  if (options.ttlMs <= 0) return

  let client: pg.Client | undefined
  let closing = false
  let retry: NodeJS.Timeout | undefined
  let backoff = 250

  const connect = async (): Promise<void> => {
    const listener = new pg.Client({
      ...connectionOptions(options.listenUrl, options.tls), application_name: 'rowfence-listen',
    })
    const lost = (error?: Error): void => {
      if (client !== listener) return
      client = undefined
      cache.disable()
      notifications.emit('listening', false)
      listener.end().catch(() => {}) // already lost, and said below (or closing on purpose)
      if (closing) return
      const err = tlsFailure(error, options.tls) ?? error
      fastify.log.warn({ err }, 'credential cache off: its invalidation listener was lost; reconnecting')
      const reconnect = (): void => {
        connect().catch(logFailure(fastify.log, 'reconnecting the credential cache listener'))
      }
      retry = setTimeout(reconnect, backoff)
      backoff = Math.min(backoff * 2, 10_000)
    }
    listener.on('error', lost)
    listener.on('end', () => { lost() })
    listener.on('notification', (message) => {
      if (message.channel !== AUTH_CHANNEL || message.payload === undefined) return
      cache.apply(message.payload)
      notifications.emit('notification', message.payload)
      for (const done of [...(waiters.get(message.payload) ?? [])]) done()
    })
    client = listener
    try {
      await listener.connect()
      await listener.query(`LISTEN ${AUTH_CHANNEL}`)
      backoff = 250
      cache.enable()
      notifications.emit('listening', true)
    } catch (error) {
      lost(error as Error)
    }
  }

  fastify.addHook('onReady', connect)
  fastify.addHook('onClose', async () => {
    closing = true
    clearTimeout(retry)
    cache.disable()
    const current = client
    client = undefined
    await current?.end().catch(logFailure(fastify.log, 'closing the credential cache listener'))
  })
}

export default fp(credentialCachePlugin, { name: 'credential-cache' })
