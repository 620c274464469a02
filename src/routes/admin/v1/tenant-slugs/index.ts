import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { notFound } from '../../../../errors.ts'
import { toOperatorTenant } from '../../../../mappers/tenants.ts'
import { findTenantBySlug } from '../../../../repositories/tenants.ts'
import { problems, Ref } from '../../../../schemas/common.ts'
import { CreateTenantSchema, OperatorTenantSchema } from '../../../../schemas/tenants.ts'

const SlugParamsSchema = Type.Object({ slug: CreateTenantSchema.properties.slug }, { additionalProperties: false })

/**
 * Finding a tenant by the slug an operator knows it by: /tenant-slugs/:slug (a prefix of its own, so that
 * no path under /tenants/:id could be read as a slug lookup).
 */
const tenantSlugs: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/:slug', {
    schema: {
      operationId: 'adminGetTenantBySlug',
      summary: 'Retrieve a tenant by its slug',
      tags: ['operator'],
      params: SlugParamsSchema,
      response: { 200: Ref(OperatorTenantSchema, 'the tenant'), ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const row = await findTenantBySlug(fastify.ownerDb, request.params.slug)
    if (row === undefined) throw notFound('tenant')
    return toOperatorTenant(row)
  })
}

export default tenantSlugs
