import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { TenantLimitsCache } from '../../limits/limits-cache.ts'
import type { Limits } from '../../limits/limits.ts'
import { Refusals } from '../../limits/refusals.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Each tenant's limits in force (src/limits/limits-cache.ts). */
    tenantLimits: TenantLimitsCache
    /** Counts requests refused by a limit (src/limits/refusals.ts). */
    limitRefusals: Refusals
  }
}

export interface TenantLimitsOptions {
  /** The configured defaults (src/limits/limits.ts: defaultLimits). */
  defaults: Limits
  /** LIMIT_REFUSAL_DELAY_MS: how long a refusal for load waits before it is sent (Refusals.hold). */
  refusalDelayMs: number
}

async function tenantLimits (fastify: FastifyInstance, options: TenantLimitsOptions): Promise<void> {
  const cache = new TenantLimitsCache(options.defaults)
  fastify.decorate('tenantLimits', cache)
  fastify.decorate('limitRefusals', new Refusals(fastify.metrics, options.refusalDelayMs))
  fastify.authNotifications.on('notification', (payload) => { cache.apply(payload) })
  fastify.authNotifications.on('listening', (listening) => {
    cache.listening = listening
    if (!listening) cache.clear()
  })
}

export default fp(tenantLimits, { name: 'tenant-limits', dependencies: ['db', 'credential-cache', 'metrics'] })
