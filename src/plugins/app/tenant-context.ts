import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { secretMatches, type Scope } from '../../auth/api-keys.ts'
import { presentedApiKey, requestedTenant } from '../../auth/credentials.ts'
import { beginTenantTransaction, endTenantTransaction, type TenantTransaction } from '../../db/tenant-transaction.ts'
import { forbidden, unauthorized } from '../../errors.ts'
import { findLiveApiKey } from '../../repositories/api-keys.ts'

/**
 * The tenant pipeline, installed on the /v1 scope only:
 *
 *  onRequest   parse the credential and x-tenant-id (400/401 without touching the database)
 *  preHandler  after body validation: check a connection out, BEGIN, bind the tenant with a
 *              transaction-local set_config, verify the key under that binding, check the scope
 *  onSend      COMMIT before the response leaves (a failed COMMIT becomes an error response, never a
 *              false 2xx), or ROLLBACK for any error status or a client that has disconnected
 *  onResponse  safety net: roll back and release whatever is still open
 *
 * The handler sees `request.db`, a Kysely transaction on which only this tenant's rows exist.
 */

export interface TenantIdentity {
  tenantId: string
  /** Who acts: the API key id (or, later, the user id). */
  actorId: string
  actorType: 'api_key'
  scopes: readonly Scope[]
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the tenant pipeline before any /v1 handler runs; null elsewhere. */
    tenant: TenantIdentity | null
    /** The tenant-bound transaction of this request; throws outside the tenant pipeline. */
    readonly db: TenantTransaction
    tenantTransaction: TenantTransaction | null
    tenantCredential: ReturnType<typeof presentedApiKey> | null
    requestedTenantId: string | null
  }
  interface FastifyContextConfig {
    /** The scope a credential needs for this route; defaults to read for GET/HEAD, write otherwise. */
    scope?: Scope
  }
}

function requiredScope (request: FastifyRequest): Scope {
  const declared = request.routeOptions.config.scope
  if (declared !== undefined) return declared
  return request.method === 'GET' || request.method === 'HEAD' ? 'read' : 'write'
}

async function release (request: FastifyRequest, commit: boolean): Promise<void> {
  const trx = request.tenantTransaction
  if (trx === null) return
  request.tenantTransaction = null
  await endTenantTransaction(trx, commit)
}

async function tenantContext (fastify: FastifyInstance): Promise<void> {
  fastify.decorateRequest('tenant', null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest): TenantTransaction {
      if (this.tenantTransaction === null) throw new Error('request.db is only available inside the tenant pipeline')
      return this.tenantTransaction
    },
  })
  fastify.decorateRequest('tenantTransaction', null)
  fastify.decorateRequest('tenantCredential', null)
  fastify.decorateRequest('requestedTenantId', null)

  fastify.addHook('onRequest', async (request) => {
    request.requestedTenantId = requestedTenant(request.headers) ?? null
    request.tenantCredential = presentedApiKey(request.headers)
  })

  // Requests whose client disconnected before the response was written: their work is rolled back.
  // (Fastify's onRequestAbort only covers a request that is still being received.)
  const abandoned = new WeakSet<FastifyRequest>()

  fastify.addHook('preHandler', async (request, reply) => {
    const credential = request.tenantCredential
    if (credential === null) throw unauthorized('missing credentials')
    const trx = await beginTenantTransaction(fastify.db, credential.tenantId)
    request.tenantTransaction = trx
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) return
      abandoned.add(request)
      request.log.info('client disconnected before the response; its transaction will be rolled back')
    })
    const key = await findLiveApiKey(trx, credential.keyId)
    if (key === undefined || !secretMatches(key.secret_hash, credential.secretHash)) {
      request.log.info({ credentialPrefix: credential.prefix, reason: key === undefined ? 'unknown or revoked key' : 'wrong secret' }, 'authentication failed')
      throw unauthorized('the API key is invalid or revoked')
    }
    if (request.requestedTenantId !== null && request.requestedTenantId !== credential.tenantId) {
      request.log.info({ credentialPrefix: credential.prefix, requestedTenant: request.requestedTenantId }, 'tenant switch denied')
      throw forbidden('this credential does not belong to the tenant in x-tenant-id')
    }
    const scope = requiredScope(request)
    if (!key.scopes.includes(scope)) throw forbidden(`this credential lacks the ${scope} scope`)
    request.tenant = { tenantId: credential.tenantId, actorId: key.id, actorType: 'api_key', scopes: key.scopes as Scope[] }
    request.log = request.log.child({ tenantId: credential.tenantId })
  })

  fastify.addHook('onSend', async (request, reply, payload) => {
    await release(request, reply.statusCode < 400 && !abandoned.has(request))
    return payload
  })

  fastify.addHook('onResponse', async (request) => {
    await release(request, false)
  })
}

export default fp(tenantContext, { name: 'tenant-context', dependencies: ['db', 'errors'] })
