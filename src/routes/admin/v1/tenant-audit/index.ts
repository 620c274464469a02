import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { verifyWholeAuditChain } from '../../../../tenancy/audit-verification.ts'
import { notFound } from '../../../../errors.ts'
import { toFullAuditVerification } from '../../../../mappers/audit.ts'
import { VERIFY_STEP_MAX } from '../../../../repositories/audit-events.ts'
import { FullAuditVerificationSchema } from '../../../../schemas/audit.ts'
import { IdParamsSchema, problems, Ref } from '../../../../schemas/common.ts'

const VerifyQuerySchema = Type.Object({
  batch_size: Type.Optional(Type.Integer({
    minimum: 1, maximum: VERIFY_STEP_MAX, default: VERIFY_STEP_MAX, description: 'events per bounded statement',
  })),
}, { additionalProperties: false })

/** Operator checks of a tenant's audit trail (registered under /tenants: /tenants/:id/audit/...). */
const tenantAudit: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/:id/audit/verify', {
    schema: {
      summary: "Verify a tenant's whole audit hash chain",
      operationId: 'adminVerifyTenantAuditChain',
      description: 'Recomputes every event from the first to the head, whatever checkpoints the tenant\'s own ' +
        'verifications recorded, and checks each checkpoint against its event: it catches what the tenant\'s ' +
        'incremental verification does not re-examine, such as an old event edited after it was checkpointed. ' +
        'Walks the chain in keyset batches of batch_size events, each one bounded statement in a short ' +
        'tenant-bound transaction of its own (statement timeout as for requests), so no statement grows with the ' +
        'trail and no lock is held for the whole walk. Reports the first broken event; when the chain holds, ' +
        'records a checkpoint at the head.',
      tags: ['operator'],
      params: IdParamsSchema,
      querystring: VerifyQuerySchema,
      response: {
        200: Ref(FullAuditVerificationSchema, 'the verification of the whole chain'), ...problems(400, 401, 404, 503),
      },
    },
  }, async (request) => {
    const { id } = request.params
    const result = await verifyWholeAuditChain(fastify.ownerPool, id, {
      batchSize: request.query.batch_size ?? VERIFY_STEP_MAX,
      timeouts: fastify.dbLimits.timeouts,
    })
    if (result === undefined) throw notFound('tenant')
    const { events, batches, broken } = result
    const ok = broken === null
    request.log.info({ tenantId: id, ok, events, batches, firstBroken: broken }, 'audit chain verified')
    return toFullAuditVerification(result)
  })
}

export default tenantAudit
