import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { UsageMeter } from '../../limits/usage-meter.ts'
import { logFailure } from '../../log-failure.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Batches per-tenant request counts (see src/limits/usage-meter.ts). */
    usageMeter: UsageMeter
  }
  interface FastifyRequest {
    /**
     * The tenant a request is counted for, set by the tenant pipeline once its credential is confirmed
     * (before its body is validated when the credential is known); null: not counted.
     */
    meteredTenantId: string | null
  }
}

export interface UsageMeterOptions {
  flushEveryMs: number
}

async function usageMeter (fastify: FastifyInstance, options: UsageMeterOptions): Promise<void> {
  const meter = new UsageMeter(fastify.dbPool, options.flushEveryMs, (error) => {
    fastify.log.warn({ err: error }, 'could not write request counts; they will be retried with the next flush')
  })
  fastify.decorate('usageMeter', meter)
  fastify.limitRefusals.setSink(meter.refusal)
  fastify.decorateRequest('meteredTenantId', null)
  // Every tenant request whose credential was confirmed, whatever its outcome (an invalid body, a refusal).
  fastify.addHook('onResponse', async (request) => {
    const tenantId = request.meteredTenantId
    if (tenantId !== null) meter.request(tenantId, `${request.method} ${request.routeOptions.url ?? ''}`)
  })
  // preClose runs before any onClose hook, so the pools are still open for the last flush.
  fastify.addHook('preClose', async () => {
    await meter.close().catch(logFailure(fastify.log, 'writing request counts at shutdown'))
  })
}

export default fp(usageMeter, { name: 'usage-meter', dependencies: ['db', 'tenant-limits'] })
