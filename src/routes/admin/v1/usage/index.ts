import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import {
  billingCsv, billingNdjson, billingRows, BILLED_COUNTERS, currentPeriod, refusalRanking,
} from '../../../../limits/usage.ts'
import { problems, Ref } from '../../../../schemas/common.ts'
import { PeriodSchema, RefusalRankingSchema } from '../../../../schemas/limits.ts'

const BillingQuerySchema = Type.Object({
  period: Type.Optional(PeriodSchema),
  format: Type.Union([Type.Literal('ndjson'), Type.Literal('csv')], {
    default: 'ndjson',
    description: 'ndjson (one JSON object per tenant) or csv (a header line, then a line per tenant)',
  }),
}, { additionalProperties: false })

const RankingQuerySchema = Type.Object({
  period: Type.Optional(PeriodSchema),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 20 }),
}, { additionalProperties: false })

const tags = ['operator']

/** Usage across tenants, for billing and for finding noisy tenants. */
const usage: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    schema: {
      summary: 'Every tenant\'s totals for a billing period (NDJSON or CSV, streamed)',
      operationId: 'adminExportUsage',
      description: 'One record per tenant (every tenant, with 0 for what it did not use), in tenant id order, ' +
        'read from one snapshot and streamed in constant memory. Counters: ' + BILLED_COUNTERS.join(', ') +
        '. The current period by default; request counts of the last few seconds may not be written yet.',
      tags,
      querystring: BillingQuerySchema,
      response: {
        200: {
          description: 'the totals',
          content: { 'application/x-ndjson': { schema: Type.String() }, 'text/csv': { schema: Type.String() } },
        },
        ...problems(400, 401, 503),
      },
    },
  }, async (request, reply) => {
    const period = request.query.period ?? currentPeriod()
    const format = request.query.format
    let tenants = 0
    const rows = (async function * () {
      for await (const row of billingRows(fastify.ownerPool, period)) {
        tenants++
        yield row
      }
    })()
    const lines = format === 'csv' ? billingCsv(rows, period) : billingNdjson(rows, period)
    request.log.info({ period, format }, 'usage export started')
    reply.raw.once('finish', () => { request.log.info({ period, format, tenants }, 'usage export finished') })
    return reply
      .type(format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson')
      .header('content-disposition', `attachment; filename="usage-${period}.${format}"`)
      // A stream, not the documented string: the route's 200 schema only describes the body for OpenAPI.
      .send(Readable.from(lines) as unknown as string)
  })

  fastify.get('/refusals', {
    schema: {
      summary: 'The tenants refused most often in a billing period',
      operationId: 'adminRankRefusals',
      description: 'Refusals by a rate limit, the tenant\'s share of the database, or a quota, counted per tenant ' +
        '(the metrics count them by reason only). Written with the request counts, every few seconds.',
      tags,
      querystring: RankingQuerySchema,
      response: { 200: Ref(RefusalRankingSchema, 'the ranking'), ...problems(400, 401, 503) },
    },
  }, async (request) => {
    const period = request.query.period ?? currentPeriod()
    return { period, data: await refusalRanking(fastify.ownerDb, period, request.query.limit) }
  })
}

export default usage
