import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { logAuditAppended } from '../../../../audit.ts'
import { notFound, unprocessable } from '../../../../errors.ts'
import { getTenantLimits, setTenantLimits, UnknownPlan } from '../../../../limits/plans.ts'
import { IdParamsSchema, problems, Ref } from '../../../../schemas/common.ts'
import { PartialLimitsSchema, PlanNameSchema, TenantLimitsSchema } from '../../../../schemas/limits.ts'

const PutLimitsSchema = Type.Object({
  plan: Type.Union([PlanNameSchema, Type.Null()], { description: 'the plan; null: the server\'s defaults' }),
  overrides: Type.Optional(PartialLimitsSchema),
}, { additionalProperties: false, examples: [{ plan: 'starter', overrides: { customers: 1000 } }] })

/** A tenant's plan and overrides (registered under /tenants: /tenants/:id/limits). */
const tenantLimits: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/:id/limits', {
    schema: {
      summary: 'A tenant\'s plan, overrides and the limits in force',
      operationId: 'adminGetTenantLimits',
      tags: ['operator'],
      params: IdParamsSchema,
      response: { 200: Ref(TenantLimitsSchema, 'the tenant\'s limits'), ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const limits = await getTenantLimits(fastify.ownerPool, request.params.id, fastify.tenantLimits.defaults)
    if (limits === undefined) throw notFound('tenant')
    return limits
  })

  fastify.put('/:id/limits', {
    schema: {
      summary: 'Put a tenant on a plan, with overrides of its own',
      operationId: 'adminPutTenantLimits',
      description: 'Replaces the tenant\'s plan and its overrides (left out: none). An override wins over the ' +
        'plan; null makes a limit unlimited. Applies from the tenant\'s next request on every instance (quotas: ' +
        'from its next write, read by the database itself). Recorded in the tenant\'s audit trail as ' +
        '`limits.changed`. 422 for a plan that does not exist.',
      tags: ['operator'],
      params: IdParamsSchema,
      body: PutLimitsSchema,
      response: { 200: Ref(TenantLimitsSchema, 'the tenant\'s limits'), ...problems(400, 401, 404, 422, 503) },
    },
  }, async (request) => {
    const { id } = request.params
    let changed
    try {
      changed = await setTenantLimits(fastify.ownerPool, id, {
        plan: request.body.plan, overrides: request.body.overrides ?? {},
      }, fastify.tenantLimits.defaults, request.id)
    } catch (error) {
      if (error instanceof UnknownPlan) {
        throw unprocessable(error.message, [{ path: 'body/plan', message: 'is not a plan' }])
      }
      throw error
    }
    if (changed.outcome === 'no-tenant') throw notFound('tenant')
    logAuditAppended(request.log, id, changed.appended)
    request.log.info({ tenantId: id, plan: changed.limits.plan, overrides: changed.limits.overrides },
      'tenant limits changed')
    // Answer once this instance has heard the change (the others hear it at the same moment).
    await fastify.awaitAuthNotification(`limits:${id}`)
    return changed.limits
  })
}

export default tenantLimits
