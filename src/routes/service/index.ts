import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { runSafetyChecks } from '../../db/safety-checks.ts'
import { unavailable } from '../../errors.ts'
import { problems } from '../../schemas/common.ts'

const Status = Type.Object({ status: Type.String() })

/** Public service endpoints: no credentials and no tenant transaction. */
const service: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/healthz', {
    schema: { summary: 'Liveness: the process is up', tags: ['service'], response: { 200: Status } },
  }, async () => ({ status: 'ok' }))

  fastify.get('/readyz', {
    schema: {
      summary: 'Readiness: the database answers and the isolation safety checks hold',
      tags: ['service'],
      response: { 200: Status, ...problems(503) },
    },
  }, async (request) => {
    let report
    try {
      report = await runSafetyChecks(fastify.dbPool)
    } catch (error) {
      request.log.warn({ err: error }, 'readiness check could not reach the database')
      throw unavailable('the database is unavailable')
    }
    if (!report.ok) {
      request.log.error({ problems: report.problems }, 'readiness check failed: isolation safety checks do not hold')
      throw unavailable('the isolation safety checks do not hold; see the server log', 30)
    }
    return { status: 'ready' }
  })
}

export default service
