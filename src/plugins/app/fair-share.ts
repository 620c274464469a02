import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Gauge } from 'prom-client'
import { HttpProblem } from '../../errors.ts'
import { FairShare, TenantQueueFull } from '../../limits/fair-share.ts'

/**
 * Each tenant's fair share of this instance's runtime pool (src/limits/fair-share.ts): the tenant
 * pipeline takes one of its tenant's slots before it asks the pool for a connection, and the request's
 * transaction gives it back when it ends (request-transaction.ts: endTransaction).
 */

declare module 'fastify' {
  interface FastifyInstance {
    /** The per-tenant admission gate in front of the runtime pool. */
    fairShare: FairShare
  }
}

export interface FairShareOptions {
  /** A tenant's requests that may wait for its share (TENANT_QUEUE_MAX); more are refused with 429. */
  queueMax: number
}

/** The tenant's share is held and its queue is full: 429, to retry in a second. */
export const tenantConcurrencyExceeded = (share: number): HttpProblem => new HttpProblem(429, {
  slug: 'tenant-concurrency-exceeded',
  title: 'Too Many Concurrent Requests',
  detail: `this tenant already has ${share} requests running on this server and its queue is full; retry shortly`,
  headers: { 'retry-after': '1' },
})

/**
 * Takes a slot of the tenant's share for the request's next transaction, waiting its turn behind the
 * tenant's earlier requests. `share` is the tenant's concurrent_requests limit (null: no cap). The slot
 * is the request's (request.tenantSlot) from here on: endTransaction releases it, and the request's
 * deadline or its client leaving takes it out of the queue (rejected with that interruption's problem).
 */
export async function takeTenantSlot (
  fastify: FastifyInstance, request: FastifyRequest, tenantId: string, share: number | null
): Promise<void> {
  if (request.interruption !== null) throw request.interruption.problem
  if (request.tenantSlot !== null) throw new Error('the request already holds a slot of its tenant\'s share')
  let slot
  try {
    slot = fastify.fairShare.take(tenantId, share)
  } catch (error) {
    if (!(error instanceof TenantQueueFull)) throw error
    // Per tenant only for a confirmed credential: a key anyone made up must not count against its tenant.
    fastify.limitRefusals.record('concurrency', request.meteredTenantId === tenantId ? tenantId : null)
    request.log.debug({ event: 'tenant_queue_full', share: error.share, waiting: error.waiting },
      'refused: the tenant holds its share of the database and its queue is full')
    await fastify.limitRefusals.hold(request, 1)
    throw tenantConcurrencyExceeded(error.share)
  }
  if (slot === null) return
  request.tenantSlot = slot
  await slot.granted
}

async function fairSharePlugin (fastify: FastifyInstance, options: FairShareOptions): Promise<void> {
  const gate = new FairShare(options.queueMax)
  fastify.decorate('fairShare', gate)
  // All tenants together: a tenant never becomes a label (unbounded series, and who is busy is private).
  fastify.metrics.registerMetric(new Gauge({
    name: 'rowfence_tenant_queue_waiting',
    help: 'requests waiting for their tenant\'s share of the runtime pool (all tenants)',
    registers: [],
    collect () { this.set(gate.waiting) },
  }))
}

export default fp(fairSharePlugin, { name: 'fair-share', dependencies: ['metrics', 'tenant-limits'] })
