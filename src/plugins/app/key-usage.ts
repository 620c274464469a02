import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { KeyUsageRecorder } from '../../auth/key-usage.ts'
import { logFailure } from '../../log-failure.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Batches API keys' last_used_at (see src/auth/key-usage.ts). */
    keyUsage: KeyUsageRecorder
  }
}

export interface KeyUsageOptions {
  flushEveryMs: number
}

async function keyUsage (fastify: FastifyInstance, options: KeyUsageOptions): Promise<void> {
  const recorder = new KeyUsageRecorder(fastify.dbPool, options.flushEveryMs, (error) => {
    fastify.log.warn({ err: error }, 'could not record API key usage; it will be retried with the next uses')
  })
  fastify.decorate('keyUsage', recorder)
  // preClose runs before any onClose hook, so the pools are still open for the last flush.
  fastify.addHook('preClose', async () => {
    await recorder.close().catch(logFailure(fastify.log, 'recording API key usage at shutdown'))
  })
}

export default fp(keyUsage, { name: 'key-usage', dependencies: ['db'] })
