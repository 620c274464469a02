import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { v7 as uuidv7 } from 'uuid'
import { ALL_SCOPES, generateApiKey } from '../../../../auth/api-keys.ts'
import { withTenantTransaction } from '../../../../db/tenant-transaction.ts'
import { notFound } from '../../../../errors.ts'
import { toTenant } from '../../../../mappers/tenants.ts'
import { insertApiKey } from '../../../../repositories/api-keys.ts'
import { insertAuditEvent } from '../../../../repositories/audit-events.ts'
import { findTenant, insertTenant, listTenants } from '../../../../repositories/tenants.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems } from '../../../../schemas/common.ts'
import { CreatedTenantSchema, CreateTenantSchema, TenantPage, TenantSchema } from '../../../../schemas/tenants.ts'

const tags = ['operator']

const tenants: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    schema: {
      summary: 'Provision a tenant and its first admin API key',
      tags,
      body: CreateTenantSchema,
      response: { 201: CreatedTenantSchema, ...problems(400, 401, 409, 503) },
    },
  }, async (request, reply) => {
    const id = uuidv7()
    const key = generateApiKey(id)
    // The operator connection binds the new tenant like any request does, so the policies'
    // WITH CHECK accepts exactly this tenant's rows; tenant row and key commit together or not at all.
    const tenant = await withTenantTransaction(fastify.ownerDb, id, async (trx) => {
      const row = await insertTenant(trx, { id, name: request.body.name, slug: request.body.slug })
      await insertApiKey(trx, { id: key.id, name: 'initial admin key', prefix: key.prefix, secret_hash: key.secretHash, scopes: [...ALL_SCOPES] })
      await insertAuditEvent(trx, {
        id: uuidv7(),
        actor_type: 'operator',
        actor_id: 'operator',
        action: 'tenant.created',
        resource_type: 'tenant',
        resource_id: id,
        request_id: request.id,
        data: JSON.stringify({ slug: row.slug, initial_key_prefix: key.prefix }),
      })
      return row
    })
    request.log.info({ tenantId: id, slug: tenant.slug, keyPrefix: key.prefix }, 'tenant provisioned')
    return reply.code(201).send({ tenant: toTenant(tenant), api_key: { id: key.id, key: key.key, scopes: [...ALL_SCOPES] } })
  })

  fastify.get('/', {
    schema: {
      summary: 'List tenants, newest first',
      tags,
      querystring: PageQuerySchema,
      response: { 200: TenantPage, ...problems(400, 401, 503) },
    },
  }, async (request) => paginate(request.query, (page) => listTenants(fastify.ownerDb, page), toTenant))

  fastify.get('/:id', {
    schema: {
      summary: 'Retrieve a tenant',
      tags,
      params: IdParamsSchema,
      response: { 200: TenantSchema, ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const row = await findTenant(fastify.ownerDb, request.params.id)
    if (row === undefined) throw notFound('tenant')
    return toTenant(row)
  })
}

export default tenants
