import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { notFound } from '../../../errors.ts'
import { toTenant } from '../../../mappers/tenants.ts'
import { findTenant } from '../../../repositories/tenants.ts'
import { problems, Ref } from '../../../schemas/common.ts'
import { TenantSchema } from '../../../schemas/tenants.ts'

const tenant: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    config: { singleQuery: true },
    schema: {
      summary: "The caller's tenant",
      operationId: 'getCurrentTenant',
      tags: ['tenant'],
      response: { 200: Ref(TenantSchema, 'the tenant the credential acts for'), ...problems(400, 401, 403, 404, 503) },
    },
  }, async (request) => {
    const row = await findTenant(request.db, request.tenant!.tenantId)
    if (row === undefined) throw notFound('tenant')
    return toTenant(row)
  })
}

export default tenant
