import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { logAuditAppended } from '../../../../audit.ts'
import { conflict, notFound } from '../../../../errors.ts'
import { problems, Uuid } from '../../../../schemas/common.ts'
import { LastAdminKey, revokeKeyAsOperator } from '../../../../tenancy/key-revocation.ts'

const KeyParamsSchema = Type.Object({ id: Uuid, key_id: Uuid }, { additionalProperties: false })

/** The operator's hold on a tenant's API keys (registered under /tenants: /tenants/:id/api-keys/...). */
const tenantKeys: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.delete('/:id/api-keys/:key_id', {
    schema: {
      operationId: 'adminRevokeTenantApiKey',
      summary: 'Revoke one of a tenant\'s API keys',
      description: 'For a leaked key, or one the tenant cannot revoke itself. The key fails with 401 from its next ' +
        'request on, on every server instance: this answers once the invalidation has reached them. Recorded in ' +
        'the tenant\'s audit trail as `api_key.revoked` by the operator. 404 for an unknown tenant or a key that ' +
        'is not live; 409 for the tenant\'s last key with the admin scope (issue a replacement first, with ' +
        'POST /admin/v1/tenants/:id/api-keys).',
      tags: ['operator'],
      params: KeyParamsSchema,
      response: { 204: { type: 'null', description: 'revoked' }, ...problems(400, 401, 404, 409, 503) },
    },
  }, async (request, reply) => {
    const { id, key_id: keyId } = request.params
    let revoked
    try {
      revoked = await revokeKeyAsOperator(fastify.ownerPool, id, keyId, request.id)
    } catch (error) {
      if (error instanceof LastAdminKey) throw conflict(error.message, 'last-admin-key')
      throw error
    }
    if (revoked.outcome === 'no-tenant') throw notFound('tenant')
    if (revoked.outcome === 'no-key') throw notFound('API key')
    logAuditAppended(request.log, id, revoked.appended)
    request.log.info({ tenantId: id, apiKey: keyId }, 'operator revoked a key')
    // Answer once the invalidation has gone round, so no instance's cache still holds the key.
    await fastify.awaitAuthNotification(`key:${keyId}`)
    return reply.code(204).send()
  })
}

export default tenantKeys
