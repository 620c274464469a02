import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { currentPeriod, readUsage } from '../../../limits/usage.ts'
import { problems, Ref } from '../../../schemas/common.ts'
import { PeriodSchema, UsageSchema } from '../../../schemas/limits.ts'

const UsageQuerySchema = Type.Object({
  period: Type.Optional(PeriodSchema),
}, { additionalProperties: false })

const usage: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    schema: {
      summary: 'What the tenant used in a billing period, against its quotas',
      operationId: 'getUsage',
      description: 'The current period (a UTC calendar month) by default, or `?period=YYYY-MM`. Each counter has ' +
        'its use, its limit (current period only; null when unlimited) and when it resets; per-day counts follow. ' +
        'Billable work (invoices created and finalized, deliveries, export bytes) is counted in the transaction ' +
        'that does it; request counts are written every few seconds, so the latest ones may not show yet.',
      tags: ['usage'],
      querystring: UsageQuerySchema,
      response: { 200: Ref(UsageSchema, 'the usage'), ...problems(400, 401, 403, 503) },
    },
  }, async (request) => {
    const period = request.query.period ?? currentPeriod()
    return readUsage(request.db, request.tenant!.tenantId, period)
  })
}

export default usage
