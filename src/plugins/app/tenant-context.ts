import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { sql, type Kysely } from 'kysely'
import { secretMatches, type Scope } from '../../auth/api-keys.ts'
import { CredentialRejected, presentedCredential, requestedTenant, unauthorizedFor, type JwtVerifier, type TenantCredential } from '../../auth/credentials.ts'
import { ROLE_SCOPES, type MemberRole, type TenantIdentity } from '../../auth/identity.ts'
import type { DB } from '../../db/schema.ts'
import { beginTenantTransaction, type TenantTransaction } from '../../db/tenant-transaction.ts'
import { badRequest, forbidden, unauthorized, type HttpProblem } from '../../errors.ts'
import { TenantScopePlugin } from '../../db/tenant-scope.ts'
import { authenticateApiKey, authenticateMember, type ApiKeyAuthRow, type MemberAuthRow } from '../../repositories/tenant-auth.ts'

/**
 * The tenant pipeline, installed on the /v1 scope only:
 *
 *  onRequest   check the credential's form (API key checksum; JWT signature, algorithm, exp, sub) and
 *              x-tenant-id: 400/401 before the body is read and without touching the database
 *  preHandler  after body validation: pick the tenant (the key's own; for a user x-tenant-id, else the
 *              tid claim, else the user's only tenant), check a connection out, BEGIN, bind the tenant
 *              with a transaction-local set_config, then verify the credential under that binding
 *              (the key row, or the user's membership) and the route's scope
 *  onSend      COMMIT before the response leaves (a failed COMMIT becomes an error response, never a
 *              false 2xx), or ROLLBACK for any error status or a client that has disconnected
 *  onResponse  safety net: roll back and release whatever is still open
 *
 * Handlers see `request.db`, a Kysely transaction in which only this tenant's rows exist, and
 * `request.tenant`, who is acting. Every refusal is logged with the request id, a public prefix of
 * the credential (never the secret) and the reason.
 */

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the tenant pipeline before any /v1 handler runs; null elsewhere. */
    tenant: TenantIdentity | null
    /**
     * The request's tenant-bound transaction, with every query scoped to the tenant (and its shard)
     * by the TenantScopePlugin; throws outside the tenant pipeline.
     */
    readonly db: Kysely<DB>
    tenantDb: Kysely<DB> | null
    tenantTransaction: TenantTransaction | null
    tenantCredential: TenantCredential | null
    requestedTenantId: string | null
    /**
     * Work to do inside the request's transaction after the handler, just before a successful
     * COMMIT, with the serialised response (e.g. storing it for an idempotency key).
     */
    beforeCommit: Array<(status: number, payload: unknown) => Promise<void>> | null
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

function credentialPrefix (credential: TenantCredential): string {
  return credential.kind === 'api_key' ? credential.key.prefix : `jwt:${credential.userId}`
}

/** Logs an access decision against the request and returns the problem to throw. */
function deny (request: FastifyRequest, problem: HttpProblem, reason: string, prefix: string | undefined, extra: Record<string, unknown> = {}): HttpProblem {
  request.log.warn({ event: 'access_denied', status: problem.status, reason, credentialPrefix: prefix, ...extra }, `access denied: ${reason}`)
  return problem
}

async function release (request: FastifyRequest, commit: boolean): Promise<void> {
  const trx = request.tenantTransaction
  if (trx === null) return
  request.tenantTransaction = null
  request.tenantDb = null
  if (!commit) return trx.rollback()
  if (trx.readOnly) {
    // Nothing to lose in a read-only transaction: the response goes out while COMMIT (and the
    // connection's release) completes behind it, saving a round trip of latency.
    trx.commit().catch((error: unknown) => { request.log.warn({ err: error }, 'COMMIT of a read-only transaction failed') })
    return
  }
  await trx.commit()
}

async function tenantContext (fastify: FastifyInstance): Promise<void> {
  fastify.decorateRequest('tenant', null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest): Kysely<DB> {
      if (this.tenantDb === null || this.tenantTransaction === null) throw new Error('request.db is only available inside the tenant pipeline')
      return this.tenantDb
    },
  })
  fastify.decorateRequest('tenantDb', null)
  fastify.decorateRequest('tenantTransaction', null)
  fastify.decorateRequest('tenantCredential', null)
  fastify.decorateRequest('requestedTenantId', null)
  fastify.decorateRequest('beforeCommit', null)

  const verifyJwt: JwtVerifier | undefined = fastify.hasDecorator('jwt')
    ? (token) => fastify.jwt.verify<Record<string, unknown>>(token)
    : undefined

  /** The user's only tenant, when the request names none; the one cross-tenant read, see 0003_memberships.sql. */
  async function soleTenantOf (request: FastifyRequest, userId: string): Promise<string> {
    const { rows } = await sql<{ tenant_id: string }>`SELECT t AS tenant_id FROM user_tenant_ids(${userId}) AS t`.execute(fastify.db)
    if (rows.length === 0) throw deny(request, forbidden('you are not a member of any tenant'), 'user has no membership', `jwt:${userId}`)
    if (rows.length > 1) throw badRequest('you belong to several tenants: choose one with x-tenant-id', [{ path: 'headers/x-tenant-id', message: 'is required for this user' }])
    return rows[0]!.tenant_id
  }

  fastify.addHook('onRequest', async (request) => {
    request.requestedTenantId = requestedTenant(request.headers) ?? null
    try {
      request.tenantCredential = presentedCredential(request.headers, verifyJwt)
    } catch (error) {
      if (!(error instanceof CredentialRejected)) throw error
      throw deny(request, unauthorizedFor(error), error.reason, error.credentialPrefix)
    }
  })

  // Requests whose client disconnected before the response was written: their work is rolled back.
  // (Fastify's onRequestAbort only covers a request that is still being received.)
  const abandoned = new WeakSet<FastifyRequest>()

  fastify.addHook('preHandler', async (request, reply) => {
    const credential = request.tenantCredential
    if (credential === null) throw unauthorized('missing credentials')
    const prefix = credentialPrefix(credential)
    const tenantId = credential.kind === 'api_key'
      ? credential.key.tenantId
      : request.requestedTenantId ?? credential.claimedTenantId ?? await soleTenantOf(request, credential.userId)

    // BEGIN, the tenant binding and the credential check travel together: one round trip.
    const readOnly = request.method === 'GET' || request.method === 'HEAD'
    const first = credential.kind === 'api_key'
      ? authenticateApiKey(fastify.db, tenantId, credential.key.keyId)
      : authenticateMember(fastify.db, tenantId, credential.userId)
    const { trx, rows } = await beginTenantTransaction(fastify.dbPool, tenantId, { readOnly, first })
    request.tenantTransaction = trx
    request.beforeCommit = []
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) return
      abandoned.add(request)
      request.log.info('client disconnected before the response; its transaction will be rolled back')
    })

    let identity: TenantIdentity
    let shard: number
    if (credential.kind === 'api_key') {
      const key = rows[0] as ApiKeyAuthRow | undefined
      if (key === undefined || !secretMatches(key.secret_hash, credential.key.secretHash)) {
        throw deny(request, unauthorized('the API key is invalid or revoked'), key === undefined ? 'unknown or revoked API key' : 'wrong API key secret', prefix)
      }
      if (key.tenant_status !== 'active') throw deny(request, unauthorized('the API key is invalid or revoked'), 'tenant is being erased', prefix)
      if (request.requestedTenantId !== null && request.requestedTenantId !== tenantId) {
        throw deny(request, forbidden('this credential does not belong to the tenant in x-tenant-id'), 'tenant switch denied', prefix, { requestedTenant: request.requestedTenantId })
      }
      shard = key.shard
      identity = { tenantId, actorType: 'api_key', actorId: key.id, scopes: key.scopes as Scope[], role: undefined, shard }
      fastify.keyUsage.record(tenantId, key.id)
    } else {
      const membership = rows[0] as MemberAuthRow | undefined
      if (membership === undefined || membership.tenant_status !== 'active') {
        throw deny(request, forbidden('you are not a member of this tenant'), membership === undefined ? 'not a member' : 'tenant is being erased', prefix, { requestedTenant: tenantId })
      }
      const role = membership.role as MemberRole
      shard = membership.shard
      identity = { tenantId, actorType: 'user', actorId: credential.userId, scopes: ROLE_SCOPES[role], role, shard }
    }
    const scope = requiredScope(request)
    if (!identity.scopes.includes(scope)) {
      throw deny(request, forbidden(`this credential lacks the ${scope} scope`), `missing ${scope} scope`, prefix)
    }
    request.tenant = identity
    request.tenantDb = trx.db.withPlugin(new TenantScopePlugin(fastify.tenantTables, { tenantId, shard }))
    request.log = request.log.child({ tenantId })
  })

  fastify.addHook('onSend', async (request, reply, payload) => {
    const commit = reply.statusCode < 400 && !abandoned.has(request) && request.tenantTransaction !== null
    if (commit) {
      const work = request.beforeCommit ?? []
      request.beforeCommit = null
      try {
        for (const step of work) await step(reply.statusCode, payload)
      } catch (error) {
        await release(request, false)
        throw error
      }
    }
    await release(request, commit)
    return payload
  })

  fastify.addHook('onResponse', async (request) => {
    await release(request, false)
  })
}

export default fp(tenantContext, { name: 'tenant-context', dependencies: ['db', 'errors', 'key-usage'] })
