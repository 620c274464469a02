import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { deleteExpiredEvents } from '../../../../tenancy/event-retention.ts'
import { deleteExpiredExports } from '../../../../tenancy/export-retention.ts'
import { sweepShards } from '../../../../tenancy/sweep.ts'
import { runSafetyChecks } from '../../../../ops/safety-checks.ts'
import { problems, Ref } from '../../../../schemas/common.ts'
import { SafetyReportSchema, SweepResultSchema } from '../../../../schemas/maintenance.ts'
import { closeUsagePeriods } from '../../../../limits/period-close.ts'

/**
 * Operator maintenance: recovery after a crash or a partition release that gave up, and the full
 * isolation safety checks on demand (start-up runs them too; /readyz does not, it is public and cheap).
 */
const maintenance: FastifyPluginAsyncTypebox<{ eventRetentionDays: number }> = async (fastify, options) => {
  fastify.get('/checks', {
    schema: {
      summary: 'Run the isolation safety checks',
      operationId: 'adminRunSafetyChecks',
      description: 'The checks start-up runs as the runtime role: it cannot bypass row-level security, every tenant ' +
        'table has ENABLE and FORCE row-level security with its policy, the runtime role holds only the privileges ' +
        'it needs. Their cost grows with the number of tables and partitions, so they run here and at start-up, ' +
        'never per request.',
      tags: ['operator'],
      response: { 200: Ref(SafetyReportSchema, 'whether every check holds, and what does not'), ...problems(401, 503) },
    },
  }, async (request) => {
    const report = await runSafetyChecks(fastify.dbPool, request.log)
    if (!report.ok) request.log.error({ problems: report.problems }, 'the isolation safety checks do not hold')
    return { ok: report.ok, problems: report.problems }
  })

  fastify.post('/sweep', {
    schema: {
      summary: 'Recover from interrupted placement moves and erasures; delete expired events and exports',
      operationId: 'adminSweep',
      description: 'Sets tenants stuck in `moving` with no live move back to active, and drops the partitions of ' +
        'dedicated shards that belong to no tenant (left by a crash, or by an erasure or move whose partition drop ' +
        'gave up), recording it on the erasure receipt. Then deletes every tenant\'s events older than ' +
        'EVENT_RETENTION_DAYS, and the tenants\' own exports past their expires_at (with their files), and sends ' +
        'usage.period_closed for each tenant\'s billing period that is over. Safe to ' +
        'run at any time; every erasure also runs the recovery part when it finishes. ' +
        'Run it regularly (e.g. daily from cron) until the job queue schedules retention.',
      tags: ['operator'],
      response: { 200: Ref(SweepResultSchema, 'what the sweep recovered, and what it left'), ...problems(401, 503) },
    },
  }, async (request) => {
    const swept = await sweepShards(fastify.ownerPool, { log: request.log })
    const eventsDeleted = await deleteExpiredEvents(fastify.ownerPool, options.eventRetentionDays)
    const exportsDeleted = await deleteExpiredExports(fastify.ownerPool)
    const periodsClosed = await closeUsagePeriods(fastify.ownerPool)
    request.log.info({ ...swept, eventsDeleted, exportsDeleted, periodsClosed }, 'maintenance sweep')
    return {
      tenants_reset: swept.tenantsReset,
      shards_released: swept.shardsReleased,
      shards_left: swept.shardsLeft,
      events_deleted: eventsDeleted,
      exports_deleted: exportsDeleted,
      usage_periods_closed: periodsClosed,
    }
  })
}

export default maintenance
