import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { conflict, notFound } from '../../../../errors.ts'
import { deletePlan, findPlan, listPlans, putPlan } from '../../../../limits/plans.ts'
import { problems, Ref } from '../../../../schemas/common.ts'
import { PartialLimitsSchema, PlanListSchema, PlanNameSchema, PlanSchema } from '../../../../schemas/limits.ts'

const PlanParamsSchema = Type.Object({ name: PlanNameSchema }, { additionalProperties: false })
const PutPlanSchema = Type.Object({ limits: PartialLimitsSchema }, {
  additionalProperties: false,
  examples: [{ limits: { requests_per_second: 20, burst: 40, invoices_created: 500, customers: null } }],
})
const tags = ['operator']

/** Plans: named sets of limits that tenants are put on (PUT /admin/v1/tenants/:id/limits). */
const plans: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    schema: {
      summary: 'List the plans',
      operationId: 'adminListPlans',
      tags,
      response: { 200: Ref(PlanListSchema, 'every plan'), ...problems(401, 503) },
    },
  }, async () => ({ data: await listPlans(fastify.ownerDb) }))

  fastify.get('/:name', {
    schema: {
      summary: 'Retrieve a plan',
      operationId: 'adminGetPlan',
      tags,
      params: PlanParamsSchema,
      response: { 200: Ref(PlanSchema, 'the plan'), ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const plan = await findPlan(fastify.ownerDb, request.params.name)
    if (plan === undefined) throw notFound('plan')
    return plan
  })

  fastify.put('/:name', {
    schema: {
      summary: 'Create a plan or replace its limits',
      operationId: 'adminPutPlan',
      description: 'The limits replace the plan\'s whole set: a limit left out falls to the server\'s default ' +
        '(LIMIT_* variables), null makes it unlimited. Tenants on the plan get the new limits on their next ' +
        'request, on every instance. The same answer whether the plan is new or replaced (the log says which).',
      tags,
      params: PlanParamsSchema,
      body: PutPlanSchema,
      response: { 200: Ref(PlanSchema, 'the plan, as it now is'), ...problems(400, 401, 503) },
    },
  }, async (request) => {
    const { plan, created } = await putPlan(fastify.ownerDb, request.params.name, request.body.limits)
    request.log.info({ plan: plan.name, limits: plan.limits, created }, created ? 'plan created' : 'plan changed')
    return plan
  })

  fastify.delete('/:name', {
    schema: {
      summary: 'Delete a plan',
      operationId: 'adminDeletePlan',
      description: '409 while any tenant is on it: move those tenants to another plan first.',
      tags,
      params: PlanParamsSchema,
      response: { 204: { type: 'null', description: 'deleted' }, ...problems(400, 401, 404, 409, 503) },
    },
  }, async (request, reply) => {
    const outcome = await deletePlan(fastify.ownerDb, request.params.name)
    if (outcome === 'missing') throw notFound('plan')
    if (outcome === 'in-use') throw conflict('tenants are on this plan: move them to another one first', 'plan-in-use')
    request.log.info({ plan: request.params.name }, 'plan deleted')
    return reply.code(204).send()
  })
}

export default plans
