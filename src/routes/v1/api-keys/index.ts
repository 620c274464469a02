import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { audit } from '../../../audit.ts'
import { accessDenied } from '../../../auth/access-log.ts'
import { generateApiKey } from '../../../auth/api-keys.ts'
import { hasOwnerRights, scopesBeyond } from '../../../auth/identity.ts'
import { conflict, forbidden, notFound, unprocessable } from '../../../errors.ts'
import { toApiKey } from '../../../mappers/identity.ts'
import { insertApiKey, listLiveApiKeys } from '../../../repositories/api-keys.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import { ApiKeyPage, CreateApiKeySchema, CreatedApiKeySchema } from '../../../schemas/identity.ts'
import { LastAdminKey, revokedKeyState, revokeLiveKey } from '../../../tenancy/key-revocation.ts'

const tags = ['api-keys']
const errors = [400, 401, 403, 503]
const config = { scope: 'admin' as const }

const apiKeys: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    // The response holds the secret key, which is never stored: a repeated idempotency key is a 409.
    config: { ...config, idempotency: 'no-replay' },
    schema: {
      summary: 'Create an API key',
      operationId: 'createApiKey',
      description: 'The key is returned once, in this response; only its hash is stored. A credential can create ' +
        'keys only with scopes it holds itself (403 otherwise). A key has owner rights (adding, promoting, demoting ' +
        'and removing owners; revoking keys that have owner rights) only when created with `owner_rights: true`, ' +
        'which needs the admin scope in `scopes` (422 otherwise) and a credential that has owner rights itself: an ' +
        'owner, or a key with owner rights such as the initial key (403 otherwise). Without it, even an admin key ' +
        'created by an owner has none: owner rights are never handed on unasked.',
      tags,
      body: CreateApiKeySchema,
      response: {
        201: Ref(CreatedApiKeySchema, 'the new key, with its secret (shown once)'),
        ...problems(...errors, 422),
      },
    },
  }, async (request, reply) => {
    // A key never has rights beyond those of the credential that creates it.
    const caller = request.tenant!
    const { scopes } = request.body
    const beyond = scopesBeyond(scopes, caller.scopes)
    if (beyond.length > 0) {
      throw accessDenied(request,
        forbidden(`this credential cannot create a key with scopes it lacks (${beyond.join(', ')})`),
        'key scopes beyond the credential\'s', { scopes })
    }
    // Asked for, never inherited: an owner's admin key for a reporting job need not be able to demote owners.
    const ownerRights = request.body.owner_rights === true
    if (ownerRights && !scopes.includes('admin')) {
      throw unprocessable('owner rights need the admin scope',
        [{ path: 'body/owner_rights', message: 'needs "admin" in scopes' }])
    }
    if (ownerRights && !await hasOwnerRights(caller, request.db)) {
      throw accessDenied(request, forbidden('only a credential with owner rights can create a key with owner rights'),
        'a key with owner rights needs owner rights', { scopes })
    }
    const key = generateApiKey(caller.tenantId)
    const row = await insertApiKey(request.db, {
      id: key.id,
      name: request.body.name,
      prefix: key.prefix,
      secret_hash: key.secretHash,
      scopes,
      owner_rights: ownerRights,
    })
    await audit(request, 'api_key.created', { type: 'api_key', id: row.id },
      { name: row.name, scopes: row.scopes, prefix: row.prefix, owner_rights: row.owner_rights }, toApiKey(row))
    return reply.code(201).send({ ...toApiKey(row), key: key.key })
  })

  fastify.get('/', {
    config,
    schema: {
      summary: 'List live API keys (never their secrets)',
      operationId: 'listApiKeys',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(ApiKeyPage, 'a page of live keys, newest first'), ...problems(...errors) },
    },
  }, async (request) => paginate(request.query, (page) => listLiveApiKeys(request.db, page), toApiKey))

  fastify.delete('/:id', {
    config,
    schema: {
      summary: 'Revoke an API key',
      operationId: 'revokeApiKey',
      description: 'The key fails with 401 from its next request on, on every server instance. ' +
        'The last live key with the admin scope cannot be revoked (409): create its replacement first. ' +
        'A key with owner rights can be revoked only by a credential with owner rights (403 otherwise).',
      tags,
      params: IdParamsSchema,
      response: { 204: { type: 'null', description: 'revoked' }, ...problems(...errors, 404, 409) },
    },
  }, async (request, reply) => {
    let target
    try {
      target = await revokeLiveKey(request.db, request.params.id, async (key) => {
        if (key.owner_rights && !await hasOwnerRights(request.tenant!, request.db)) {
          throw accessDenied(request,
            forbidden('only a credential with owner rights can revoke a key with owner rights'),
            'revoking an owner key needs owner rights', { apiKey: key.id })
        }
      })
    } catch (error) {
      if (error instanceof LastAdminKey) {
        throw conflict('this is the last API key with the admin scope; create another one before revoking it',
          'last-admin-key')
      }
      throw error
    }
    if (target === undefined) throw notFound('API key')
    // target.id is the database's spelling of the id, not the client's: the trail keeps one spelling.
    await audit(request, 'api_key.revoked', { type: 'api_key', id: target.id }, {}, revokedKeyState(target))
    // Answer once the invalidation has gone round, so no instance's cache still holds the key.
    request.afterCommit!.push(() => fastify.awaitAuthNotification(`key:${target.id}`))
    return reply.code(204).send()
  })
}

export default apiKeys
