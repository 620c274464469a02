import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { sweepShards } from '../../../../tenancy/placement.ts'
import { runSafetyChecks } from '../../../../ops/safety-checks.ts'
import { problems, Uuid } from '../../../../schemas/common.ts'

const SweepResultSchema = Type.Object({
  tenants_reset: Type.Array(Uuid, { description: 'tenants left `moving` by a placement move that died, set back to active (where they were)' }),
  shards_released: Type.Array(Type.Integer(), { description: 'dedicated shards no tenant lives in whose empty partitions were dropped (noted on their erasure receipts)' }),
  shards_left: Type.Array(Type.Integer(), { description: 'such shards that could not be released now (an operation still running, or the tables busy): sweep again later' }),
}, { title: 'SweepResult' })

const SafetyReportSchema = Type.Object({
  ok: Type.Boolean({ description: 'true when every isolation safety check holds' }),
  problems: Type.Array(Type.String(), { description: 'each check that does not hold, in words' }),
}, { title: 'SafetyReport' })

/**
 * Operator maintenance: recovery after a crash or a partition release that gave up, and the full
 * isolation safety checks on demand (start-up runs them too; /readyz does not, it is public and cheap).
 */
const maintenance: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/checks', {
    schema: {
      summary: 'Run the isolation safety checks',
      description: 'The checks start-up runs as the runtime role: it cannot bypass row-level security, every tenant table has ' +
        'ENABLE and FORCE row-level security with its policy, the runtime role holds only the privileges it needs. ' +
        'Their cost grows with the number of tables and partitions, so they run here and at start-up, never per request.',
      tags: ['operator'],
      response: { 200: SafetyReportSchema, ...problems(401, 503) },
    },
  }, async (request) => {
    const report = await runSafetyChecks(fastify.dbPool)
    if (!report.ok) request.log.error({ problems: report.problems }, 'the isolation safety checks do not hold')
    return { ok: report.ok, problems: report.problems }
  })

  fastify.post('/sweep', {
    schema: {
      summary: 'Recover from interrupted placement moves and erasures',
      description: 'Sets tenants stuck in `moving` with no live move back to active, and drops the partitions of dedicated shards that belong to no tenant ' +
        '(left by a crash, or by an erasure or move whose partition drop gave up), recording it on the erasure receipt. Safe to run at any time; ' +
        'every erasure also runs it when it finishes.',
      tags: ['operator'],
      response: { 200: SweepResultSchema, ...problems(401, 503) },
    },
  }, async (request) => {
    const swept = await sweepShards(fastify.ownerPool)
    request.log.info({ ...swept }, 'maintenance sweep')
    return { tenants_reset: swept.tenantsReset, shards_released: swept.shardsReleased, shards_left: swept.shardsLeft }
  })
}

export default maintenance
