import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { assertPoolQueue, PoolSaturated } from '../../db/pool-queue.ts'
import { HttpProblem, unavailable } from '../../errors.ts'
import { problems } from '../../schemas/common.ts'

const Status = (description: string) => Type.Object({ status: Type.String() }, { description })

/**
 * Public service endpoints: no credentials and no tenant transaction. Readiness is cheap on purpose:
 * anyone can call it, so it costs one `SELECT 1` from the runtime pool, in the pool's bounded queue
 * like a request. The isolation safety checks run at start-up (the server refuses to serve without
 * them) and when an operator asks (GET /admin/v1/maintenance/checks, npm run check).
 */
const service: FastifyPluginAsyncTypebox = async (fastify) => {
  // One probe at a time, shared by every call that arrives while it runs: a flood of /readyz holds at
  // most one runtime connection, and each answer is as fresh as the probe it waited for.
  let inFlight: Promise<HttpProblem | undefined> | undefined
  /** Whether a runtime connection can be had and answers; the refusal to send when not. */
  async function readiness (): Promise<HttpProblem | undefined> {
    try {
      assertPoolQueue(fastify.dbPool, fastify.dbLimits.maxWaiting)
      await fastify.dbPool.query('SELECT 1')
      return undefined
    } catch (error) {
      if (error instanceof PoolSaturated) return unavailable('the server is at capacity; retry shortly', 1)
      fastify.log.warn({ err: { message: (error as Error).message } }, 'readiness check could not reach the database')
      return unavailable('the database is unavailable')
    }
  }
  function currentProbe (): Promise<HttpProblem | undefined> {
    inFlight ??= readiness().finally(() => { inFlight = undefined })
    return inFlight
  }

  fastify.get('/healthz', {
    schema: {
      summary: 'Liveness: the process is up',
      operationId: 'getLiveness',
      tags: ['service'],
      response: { 200: Status('the process is up: {"status": "ok"}') },
    },
  }, async () => ({ status: 'ok' }))

  fastify.get('/readyz', {
    schema: {
      summary: 'Readiness: the database answers and a connection can be had',
      operationId: 'getReadiness',
      tags: ['service'],
      response: { 200: Status('ready to serve: {"status": "ready"}'), ...problems(503) },
    },
  }, async () => {
    const failure = await currentProbe()
    if (failure !== undefined) throw failure
    return { status: 'ready' }
  })
}

export default service
