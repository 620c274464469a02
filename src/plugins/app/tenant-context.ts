import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { sql, type Kysely } from 'kysely'
import { credentialPrefix, logAccessDenied as deny } from '../../auth/access-log.ts'
import type { Scope } from '../../auth/api-keys.ts'
import {
  CredentialRejected, presentedCredential, requestedTenant, unauthorizedFor, type JwtVerifier, type TenantCredential,
} from '../../auth/credentials.ts'
import type { TenantIdentity } from '../../auth/identity.ts'
import {
  cachedKeyIdentity, cachedMemberIdentity, cacheEntryOf, identify, isDenial, rememberIdentity, sameIdentity,
} from '../../auth/tenant-access.ts'
import { registerScope } from '../../db/query-templates.ts'
import type { DB } from '../../db/schema.ts'
import { TenantScopePlugin } from '../../db/tenant-scope.ts'
import type { Binding } from '../../db/tenant-transaction.ts'
import { badRequest, forbidden, unauthorized, unavailable } from '../../errors.ts'
import requestTransaction, { endTransaction, openTransaction } from './request-transaction.ts'

/**
 * The tenant pipeline, installed on the /v1 scope only:
 *
 *  onRequest   check the credential's form (API key checksum; JWT signature, algorithm, exp, sub) and
 *              x-tenant-id: 400/401/403 before the body is read and without touching the database
 *  preParsing  a request with a body and an API key this instance has not confirmed recently: look the
 *              key up under its tenant's binding (one short transaction) and refuse it (401/403) before
 *              the body is read; a key anyone made up costs no parsing
 *  preHandler  after body validation: pick the tenant (the key's own; for a user x-tenant-id, else the
 *              tid claim, else the user's only tenant), take a slot of the tenant's share of the pool
 *              (fair-share.ts: past its share, wait in its own queue), check a connection out and send BEGIN and
 *              bind_tenant(): the transaction-local binding, the tenant's shared lock, and a fresh read
 *              of the tenant, the presented key or the user's membership — one statement, one round
 *              trip. A credential this instance verified recently (CredentialCache) lets the handler's
 *              queries follow in the same flight; otherwise the pipeline waits for the answer.
 * The transaction's deadline, its end (COMMIT before the response leaves) and a client leaving
 * midway are request-transaction.ts's, which this plugin registers.
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
    tenantCredential: TenantCredential | null
    /** The key as the database confirmed it before the body was read (the preParsing check), if it was. */
    confirmedKey: TenantIdentity | null
    requestedTenantId: string | null
    /** The request was counted against its tenant's rate (once, in preValidation or preHandler). */
    tenantRateJudged: boolean
  }
  interface FastifyContextConfig {
    /** The scope a credential needs for this route; defaults to read for GET/HEAD, write otherwise. */
    scope?: Scope
    /**
     * A read that sends exactly one query: its COMMIT can leave in the same write as the query. A
     * second query from such a route fails loudly.
     */
    singleQuery?: boolean
    /**
     * A GET that writes bookkeeping of its own (the audit verification's checkpoint): its transaction
     * is not READ ONLY. Other GET and HEAD requests run READ ONLY.
     */
    writes?: boolean
    /** The one route a pending membership (an invitation not accepted yet) may reach: accepting it. */
    pendingMember?: boolean
  }
}

function requiredScope (request: FastifyRequest): Scope {
  const declared = request.routeOptions.config.scope
  if (declared !== undefined) return declared
  return request.method === 'GET' || request.method === 'HEAD' ? 'read' : 'write'
}

async function tenantContext (fastify: FastifyInstance): Promise<void> {
  fastify.decorateRequest('tenant', null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest): Kysely<DB> {
      if (this.tenantDb === null || this.tenantTransaction === null) {
        throw new Error('request.db is only available inside the tenant pipeline')
      }
      return this.tenantDb
    },
  })
  fastify.decorateRequest('tenantDb', null)
  fastify.decorateRequest('tenantCredential', null)
  fastify.decorateRequest('confirmedKey', null)
  fastify.decorateRequest('requestedTenantId', null)
  fastify.decorateRequest('tenantRateJudged', false)

  const cache = fastify.credentialCache
  const verifyJwt: JwtVerifier | undefined = fastify.hasDecorator('jwt')
    ? (token) => fastify.jwt.verify<Record<string, unknown>>(token)
    : undefined

  /** The user's only tenant, when the request names none; the one cross-tenant read, see 0003_memberships.sql. */
  async function soleTenantOf (request: FastifyRequest, userId: string): Promise<string> {
    const { rows } = await sql<{ tenant_id: string }>`SELECT t AS tenant_id FROM user_tenant_ids(${userId}) AS t`
      .execute(fastify.db)
    if (rows.length === 0) {
      throw deny(request, forbidden('you are not a member of any tenant'), 'user has no membership', `jwt:${userId}`)
    }
    if (rows.length > 1) {
      throw badRequest('you belong to several tenants: choose one with x-tenant-id',
        [{ path: 'headers/x-tenant-id', message: 'is required for this user' }])
    }
    return rows[0]!.tenant_id
  }

  /** The tenant a credential acts for when it says (a key always does; a JWT may leave it to preHandler). */
  const namedTenant = (request: FastifyRequest, credential: TenantCredential): string | undefined =>
    credential.kind === 'api_key' ? credential.key.tenantId : request.requestedTenantId ?? credential.claimedTenantId

  /**
   * Who the credential is in `tenantId` as this instance confirmed it recently (the credential cache, or,
   * for a key, the check before its body was read); undefined when it did not.
   */
  function knownIdentity (
    request: FastifyRequest, credential: TenantCredential, tenantId: string
  ): TenantIdentity | undefined {
    return credential.kind === 'api_key'
      ? cachedKeyIdentity(cache, credential.key) ?? request.confirmedKey ?? undefined
      : cachedMemberIdentity(cache, tenantId, credential.userId)
  }

  /** Whether this instance confirmed the credential recently: no guess, then. */
  function confirmedHere (request: FastifyRequest, credential: TenantCredential): boolean {
    const tenantId = namedTenant(request, credential)
    return tenantId !== undefined && knownIdentity(request, credential, tenantId) !== undefined
  }

  fastify.addHook('onRequest', async (request) => {
    request.requestedTenantId = requestedTenant(request.headers) ?? null
    let credential: TenantCredential
    try {
      credential = presentedCredential(request.headers, verifyJwt)
    } catch (error) {
      if (!(error instanceof CredentialRejected)) throw error
      await fastify.rateLimits.refuseBlockedAddress(request)
      throw deny(request, unauthorizedFor(error), error.reason, error.credentialPrefix)
    }
    // An address that failed to authenticate too often is refused (rate-limit.ts) before its body is read
    // or its credential looked up, unless this instance confirmed that credential recently: a client using
    // a credential it holds is not guessing, and a guesser behind the same address (a NAT, a proxy) does
    // not lock it out; nor does every request of a confirmed credential ask the shared store about it.
    if (!confirmedHere(request, credential)) await fastify.rateLimits.refuseBlockedAddress(request)
    request.tenantCredential = credential
    // A key names its tenant: naming another one in x-tenant-id is refused before any database work.
    const requested = request.requestedTenantId
    if (credential.kind === 'api_key' && requested !== null && requested !== credential.key.tenantId) {
      const problem = forbidden('this credential does not belong to the tenant in x-tenant-id')
      throw deny(request, problem, 'tenant switch denied', credential.key.prefix, { requestedTenant: requested })
    }
  })

  // Its hooks after the credential check, as they always ran: a refused credential sets no deadline.
  await fastify.register(requestTransaction)

  /**
   * The fresh answer for a request that went ahead on a cached credential. The same identity lets it
   * through; a refusal or a change is thrown (the request rolls back and answers with it) and evicts
   * the entry: 401/403 as on any request, or 503 to retry when the tenant moved or the credential
   * changed under a request that may have read with the old one.
   */
  function confirmCached (
    request: FastifyRequest, binding: Binding, credential: TenantCredential, assumed: TenantIdentity,
    prefix: string | undefined
  ): void {
    const found = identify(binding, credential, assumed.tenantId, acceptsPending(request))
    const evict = (): void => {
      cache.apply(cacheEntryOf(credential, assumed.tenantId))
    }
    if (isDenial(found)) {
      evict()
      throw deny(request, found.problem, found.reason, prefix, found.extra)
    }
    try {
      assertScope(request, found, prefix)
    } catch (error) {
      evict()
      throw error
    }
    if (!sameIdentity(found, assumed)) {
      evict()
      request.log.info({ event: 'credential_changed' },
        'the tenant or credential changed while the request ran; it was rolled back')
      throw unavailable('the tenant or credential changed while this request ran; retry it', 1)
    }
    recordUse(found)
  }

  const acceptsPending = (request: FastifyRequest): boolean => request.routeOptions.config.pendingMember === true

  /** The route's scope must be held (the acceptance route, open to pending members, checks for itself). */
  function assertScope (request: FastifyRequest, identity: TenantIdentity, prefix: string | undefined): void {
    if (acceptsPending(request)) return
    const scope = requiredScope(request)
    if (!identity.scopes.includes(scope)) {
      throw deny(request, forbidden(`this credential lacks the ${scope} scope`), `missing ${scope} scope`, prefix)
    }
  }

  /** A key's use counts once the database has confirmed the key and it was allowed to act. */
  function recordUse (identity: TenantIdentity): void {
    if (identity.actorType === 'api_key') fastify.keyUsage.record(identity.tenantId, identity.actorId)
  }

  const limits = fastify.dbLimits
  const timeouts = limits.timeouts

  /**
   * The body is read only once the API key presenting it is known to the database. A key with a valid
   * checksum needs no database to pass onRequest, so anyone can make one up; were its body read and
   * validated first, anyone could make the server parse a megabyte for nothing. A key this instance
   * confirmed recently (the credential cache) goes on at once; any other is looked up under its
   * tenant's binding first (one short transaction) and refused before its body is read. Requests
   * without a body, and JWTs (verified by their signature alone), are not held up.
   */
  fastify.addHook('preParsing', async (request) => {
    const credential = request.tenantCredential
    if (credential?.kind !== 'api_key' || request.method === 'GET' || request.method === 'HEAD') return
    if (request.headers['content-length'] === undefined && request.headers['transfer-encoding'] === undefined) return
    if (request.headers['content-length'] === '0') return
    const { keyId, tenantId } = credential.key
    const known = cachedKeyIdentity(cache, credential.key)
    if (known !== undefined) {
      assertScope(request, known, credential.key.prefix) // confirmed again against the fresh answer later
      return
    }
    const generation = cache.generation
    // A short read-only check, under the share this instance knows for the tenant or else the default:
    // the tenant's limits are not read first for a key that may be made up. Its slot is released (in
    // endTransaction, below) before preHandler takes the request's own.
    const knownLimits = fastify.tenantLimits.cached(tenantId)
    const share = (knownLimits ?? fastify.tenantLimits.defaults).concurrent_requests
    const limitsGeneration = fastify.tenantLimits.generation
    const trx = await openTransaction(fastify, request, tenantId, share,
      { readOnly: true, check: { keyId }, timeouts, wantLimits: knownLimits === undefined })
    let binding: Binding
    try {
      binding = await trx.ready
    } catch (error) {
      throw trx.abortReason ?? error
    } finally {
      await endTransaction(request, false)
    }
    const found = identify(binding, credential, tenantId)
    if (isDenial(found)) throw deny(request, found.problem, found.reason, credential.key.prefix, found.extra)
    assertScope(request, found, credential.key.prefix)
    fastify.tenantLimits.remember(tenantId, binding.limits, limitsGeneration) // read with the key, for preHandler
    // A tenant being moved is not remembered: its shard is about to change (preHandler waits for its check).
    if (binding.status === 'active') {
      rememberIdentity(cache, found, binding, credential, generation)
      request.confirmedKey = found
    }
  })

  /**
   * The tenant's rate counts each request once, and only once its credential is known good: anyone can
   * make up a key naming a tenant. When this instance confirmed the credential recently and holds the
   * tenant's limits, the rate is judged before the body is validated, so that a request refused for its
   * rate (or whose body is invalid) is still counted, and takes no slot and no connection; the handler's
   * queries may then follow BEGIN and the binding at once. Otherwise it is judged in preHandler, once the
   * binding has answered: the credential confirmed, and the tenant's limits read fresh with it. A JWT that
   * names no tenant waits for preHandler (its tenant is looked up there).
   */
  fastify.addHook('preValidation', async (request, reply) => {
    const credential = request.tenantCredential
    if (credential === null) return
    const tenantId = namedTenant(request, credential)
    if (tenantId === undefined) return
    const known = knownIdentity(request, credential, tenantId)
    const inForce = fastify.tenantLimits.cached(tenantId)
    if (known === undefined || inForce === undefined) return
    // Scope first: a key that may not make this request does not spend its tenant's budget.
    assertScope(request, known, credentialPrefix(credential))
    request.meteredTenantId = tenantId
    request.tenantRateJudged = true
    await fastify.rateLimits.judgeTenant(request, reply, tenantId, inForce)
  })

  fastify.addHook('preHandler', async (request, reply) => {
    const credential = request.tenantCredential
    if (credential === null) throw unauthorized('missing credentials')
    const prefix = credentialPrefix(credential)
    const tenantId = credential.kind === 'api_key'
      ? credential.key.tenantId
      : request.requestedTenantId ?? credential.claimedTenantId ?? await soleTenantOf(request, credential.userId)
    const reads = request.method === 'GET' || request.method === 'HEAD'
    const readOnly = reads && request.routeOptions.config.writes !== true

    // A credential this instance verified recently (and that no notification has invalidated since)
    // lets the handler's queries leave in the same write as BEGIN and bind_tenant(), without waiting
    // for its answer. The answer is still read fresh on every request and confirmed before any query
    // result reaches the handler and before COMMIT (TenantTransaction.confirmed): a key revoked or a
    // membership removed a moment ago, on any instance, is refused on its very next request, and
    // nothing the request read or wrote survives the refusal. The cache is consulted once a
    // connection is ours, right before sending (see startTenantTransaction).
    let cached: TenantIdentity | undefined
    let generation = 0
    const check = credential.kind === 'api_key' ? { keyId: credential.key.keyId } : { userId: credential.userId }
    // Judged in preValidation when the credential and the tenant's limits were known; else below.
    const limitsGeneration = fastify.tenantLimits.generation
    let inForce = fastify.tenantLimits.cached(tenantId)
    const rateJudged = request.tenantRateJudged
    // Until its limits are known, a tenant's share is the default.
    const share = (inForce ?? fastify.tenantLimits.defaults).concurrent_requests
    const trx = await openTransaction(fastify, request, tenantId, share, () => {
      generation = cache.generation
      // For a key, its check before the body was read counts when the cache could not keep it (disabled,
      // or invalidated since).
      cached = knownIdentity(request, credential, tenantId)
      // The binding answers the tenant's limits too when this instance does not hold them (anymore).
      const wantLimits = fastify.tenantLimits.cached(tenantId) === undefined
      if (cached === undefined || !rateJudged) return { readOnly, check, timeouts, wantLimits }
      const assumed = cached
      return {
        readOnly,
        check,
        timeouts,
        wantLimits,
        holdWrites: true,
        singleQuery: request.routeOptions.config.singleQuery === true,
        confirm: (binding: Binding) => {
          confirmCached(request, binding, credential, assumed, prefix)
          fastify.tenantLimits.remember(tenantId, binding.limits, limitsGeneration)
        },
      }
    })
    request.beforeCommit = []
    request.afterCommit = []

    let identity: TenantIdentity
    if (cached !== undefined && rateJudged) {
      identity = cached
      assertScope(request, identity, prefix) // again, against the fresh answer, in confirmCached
    } else {
      let binding: Binding
      try {
        binding = await trx.ready
      } catch (error) {
        throw trx.abortReason ?? error
      }
      const found = identify(binding, credential, tenantId, acceptsPending(request))
      if (isDenial(found)) throw deny(request, found.problem, found.reason, prefix, found.extra)
      identity = found
      // A tenant that is being moved is served, but not cached: its shard is about to change. An
      // invitation not accepted yet is not cached either: it grants nothing.
      if (binding.status === 'active') rememberIdentity(cache, identity, binding, credential, generation)
      inForce = fastify.tenantLimits.remember(tenantId, binding.limits, limitsGeneration) ??
        inForce ?? fastify.tenantLimits.defaults
      assertScope(request, identity, prefix)
      request.meteredTenantId = tenantId
      if (!rateJudged) {
        request.tenantRateJudged = true
        // A refusal rolls the transaction back (request-transaction.ts).
        await fastify.rateLimits.judgeTenant(request, reply, tenantId, inForce)
      }
      recordUse(identity)
    }
    request.tenant = identity
    const scope = { tenantId, shard: identity.shard }
    request.tenantDb = trx.db.withPlugin(new TenantScopePlugin(fastify.tenantTables, scope))
    registerScope(request.tenantDb, { tenantId, shard: identity.shard, assertOpen: () => { trx.assertOpen() } })
    request.log = request.log.child({ tenantId })
    reply.log = request.log // the "request completed" line carries the tenant too
  })
}

export default fp(tenantContext, {
  name: 'tenant-context',
  dependencies: ['db', 'errors', 'key-usage', 'credential-cache', 'fair-share', 'rate-limit'],
})
