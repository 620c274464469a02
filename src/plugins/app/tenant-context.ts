import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { sql, type Kysely } from 'kysely'
import { secretMatches, type ParsedApiKey, type Scope } from '../../auth/api-keys.ts'
import { CredentialRejected, presentedCredential, requestedTenant, unauthorizedFor, type JwtVerifier, type TenantCredential } from '../../auth/credentials.ts'
import { ROLE_SCOPES, type MemberRole, type TenantIdentity } from '../../auth/identity.ts'
import type { DB } from '../../db/schema.ts'
import { registerScope } from '../../db/query-templates.ts'
import { TenantScopePlugin } from '../../db/tenant-scope.ts'
import { PoolSaturated, startTenantTransaction, type Binding, type TenantTransaction } from '../../db/tenant-transaction.ts'
import { badRequest, forbidden, HttpProblem, unauthorized, unavailable } from '../../errors.ts'

/**
 * The tenant pipeline, installed on the /v1 scope only:
 *
 *  onRequest   check the credential's form (API key checksum; JWT signature, algorithm, exp, sub) and
 *              x-tenant-id: 400/401/403 before the body is read and without touching the database
 *  preParsing  a request with a body and an API key this instance has not confirmed recently: look the
 *              key up under its tenant's binding (one short transaction) and refuse it (401/403) before
 *              the body is read; a key anyone made up costs no parsing
 *  preHandler  after body validation: pick the tenant (the key's own; for a user x-tenant-id, else the
 *              tid claim, else the user's only tenant), check a connection out and send BEGIN and
 *              bind_tenant(): the transaction-local binding, the tenant's shared lock, and a fresh read
 *              of the tenant, the presented key or the user's membership — one statement, one round
 *              trip. A credential this instance verified recently (CredentialCache) lets the handler's
 *              queries follow in the same flight; otherwise the pipeline waits for the answer.
 *  onSend      COMMIT before the response leaves (a failed COMMIT, or a cached credential that the
 *              binding's fresh answer no longer confirms, becomes an error response, never a false
 *              2xx), or ROLLBACK for any error status or a client that has disconnected
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
    /** The key as the database confirmed it before the body was read (the preParsing check), if it was. */
    confirmedKey: TenantIdentity | null
    requestedTenantId: string | null
    /**
     * Work to do inside the request's transaction after the handler, just before a successful
     * COMMIT, with the serialised response (e.g. storing it for an idempotency key).
     */
    beforeCommit: Array<(status: number, payload: unknown) => Promise<void>> | null
    /** Work to do once the transaction has committed, before the response leaves. */
    afterCommit: Array<() => Promise<void>> | null
    /** The request's deadline (REQUEST_DEADLINE_MS): when it fires, the transaction is aborted. */
    tenantDeadline: NodeJS.Timeout | null
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
  // Reads too wait for their COMMIT (for a single-query read it left with the query and is answered
  // in the same packet): the response never goes out ahead of its transaction's end.
  if (commit) await trx.commit()
  else await trx.rollback()
}

interface Denial { problem: HttpProblem, reason: string, extra?: Record<string, unknown> }

/** Who the credential is in this tenant, from bind_tenant()'s fresh answer, or why it is refused. */
function identify (binding: Binding, credential: TenantCredential, tenantId: string, acceptsPending = false): TenantIdentity | Denial {
  const active = (binding.status === 'active' || binding.status === 'moving') && binding.shard !== null
  if (credential.kind === 'api_key') {
    const invalid = (reason: string): Denial => ({ problem: unauthorized('the API key is invalid or revoked'), reason })
    if (binding.key_secret_hash === null || binding.key_scopes === null) return invalid('unknown or revoked API key')
    if (!secretMatches(binding.key_secret_hash, credential.key.secretHash)) return invalid('wrong API key secret')
    if (!active) return invalid('tenant is being erased')
    return { tenantId, actorType: 'api_key', actorId: credential.key.keyId, scopes: binding.key_scopes as Scope[], role: undefined, shard: binding.shard! }
  }
  if (binding.member_role === null || !active) {
    return { problem: forbidden('you are not a member of this tenant'), reason: binding.member_role === null ? 'not a member' : 'tenant is being erased', extra: { requestedTenant: tenantId } }
  }
  if (binding.member_role === 'pending') {
    if (!acceptsPending) {
      return { problem: forbidden('your membership of this tenant is pending: accept it first (POST /v1/membership/accept)'), reason: 'membership pending', extra: { requestedTenant: tenantId } }
    }
    return { tenantId, actorType: 'user', actorId: credential.userId, scopes: [], role: 'pending', shard: binding.shard! }
  }
  const role = binding.member_role as MemberRole
  return { tenantId, actorType: 'user', actorId: credential.userId, scopes: ROLE_SCOPES[role], role, shard: binding.shard! }
}

const isDenial = (value: TenantIdentity | Denial): value is Denial => 'problem' in value

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
  fastify.decorateRequest('confirmedKey', null)
  fastify.decorateRequest('requestedTenantId', null)
  fastify.decorateRequest('beforeCommit', null)
  fastify.decorateRequest('afterCommit', null)
  fastify.decorateRequest('tenantDeadline', null)

  const cache = fastify.credentialCache
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
    // A key names its tenant: naming another one in x-tenant-id is refused before any database work.
    const credential = request.tenantCredential
    if (credential.kind === 'api_key' && request.requestedTenantId !== null && request.requestedTenantId !== credential.key.tenantId) {
      throw deny(request, forbidden('this credential does not belong to the tenant in x-tenant-id'), 'tenant switch denied', credential.key.prefix, { requestedTenant: request.requestedTenantId })
    }
  })

  /**
   * The fresh answer for a request that went ahead on a cached credential. The same identity lets it
   * through; a refusal or a change is thrown (the request rolls back and answers with it) and evicts
   * the entry: 401/403 as on any request, or 503 to retry when the tenant moved or the credential
   * changed under a request that may have read with the old one.
   */
  function confirmCached (request: FastifyRequest, binding: Binding, credential: TenantCredential, assumed: TenantIdentity, prefix: string): void {
    const found = identify(binding, credential, assumed.tenantId, acceptsPending(request))
    const evict = (): void => {
      cache.apply(credential.kind === 'api_key' ? `key:${credential.key.keyId}` : `member:${assumed.tenantId}:${credential.userId}`)
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
    if (found.shard !== assumed.shard || found.role !== assumed.role || found.scopes.join() !== assumed.scopes.join()) {
      evict()
      request.log.info({ event: 'credential_changed' }, 'the tenant or credential changed while the request ran; it was rolled back')
      throw unavailable('the tenant or credential changed while this request ran; retry it', 1)
    }
    recordUse(found)
  }

  const acceptsPending = (request: FastifyRequest): boolean => request.routeOptions.config.pendingMember === true

  /** The key as this instance confirmed it recently, if the presented key is that one (same tenant, same secret). */
  function cachedKeyFor (key: ParsedApiKey): TenantIdentity | undefined {
    const known = cache.getKey(key.keyId)
    if (known === undefined || known.tenantId !== key.tenantId || !secretMatches(known.secretHash, key.secretHash)) return undefined
    return { tenantId: known.tenantId, actorType: 'api_key', actorId: known.keyId, scopes: known.scopes, role: undefined, shard: known.shard }
  }

  /** Remembers a credential the database just confirmed, so its next requests need not wait for the check. */
  function cacheIdentity (identity: TenantIdentity, binding: Binding, credential: TenantCredential, generation: number): void {
    if (credential.kind === 'api_key') {
      const key = { tenantId: identity.tenantId, keyId: credential.key.keyId, scopes: identity.scopes, secretHash: binding.key_secret_hash!, shard: identity.shard }
      cache.setKey(key, generation)
    } else if (identity.role !== undefined && identity.role !== 'pending') {
      cache.setMember({ tenantId: identity.tenantId, userId: credential.userId, role: identity.role, shard: identity.shard }, generation)
    }
  }

  /** The route's scope must be held (the acceptance route, open to pending members, checks for itself). */
  function assertScope (request: FastifyRequest, identity: TenantIdentity, prefix: string): void {
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

  // Requests whose client disconnected before the response was written: their work is rolled back.
  // (Fastify's onRequestAbort only covers a request that is still being received.)
  const abandoned = new WeakSet<FastifyRequest>()
  // Requests past their deadline: cancelled, rolled back and answered 503.
  const expired = new WeakSet<FastifyRequest>()
  const limits = fastify.dbLimits
  const timeouts = limits.timeouts
  // Nobody reads this answer; the status (nginx's 499) is for the logs and metrics.
  const clientGone = (): HttpProblem => new HttpProblem(499, { slug: 'client-closed-request', title: 'Client Closed Request', detail: 'the client disconnected' })
  const deadlineProblem = (): HttpProblem => unavailable(`the request did not complete within ${limits.deadlineMs} ms and was cancelled; retry it`, 1)

  fastify.addHook('onRequest', async (request, reply) => {
    request.tenantDeadline = setTimeout(() => {
      if (reply.raw.writableEnded) return
      expired.add(request)
      request.log.warn({ event: 'deadline_exceeded', deadlineMs: limits.deadlineMs }, 'request deadline passed: cancelling its transaction')
      request.tenantTransaction?.abort(deadlineProblem())
    }, limits.deadlineMs).unref()
    // A client that disconnects gets its work rolled back, and its running statement cancelled so
    // that it stops holding a backend and a pooled connection. (onResponse does not run for it.)
    reply.raw.once('close', () => {
      if (request.tenantDeadline !== null) clearTimeout(request.tenantDeadline)
      if (reply.raw.writableEnded) return
      abandoned.add(request)
      request.log.info('client disconnected before the response; its transaction is cancelled and rolled back')
      request.tenantTransaction?.abort(clientGone())
    })
  })

  /** A full connection queue is a 503 to retry, logged as load shedding; anything else goes on. */
  function shedWhenSaturated (request: FastifyRequest) {
    return (error: unknown): never => {
      if (error instanceof PoolSaturated) {
        request.log.warn({ event: 'load_shed', reason: error.message }, 'refused: the database connection queue is full')
        throw unavailable('the server is at capacity; retry shortly', 1)
      }
      throw error
    }
  }

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
    const known = cachedKeyFor(credential.key)
    if (known !== undefined) {
      assertScope(request, known, credential.key.prefix) // confirmed again against the fresh answer later
      return
    }
    const generation = cache.generation
    const trx = await startTenantTransaction(fastify.dbPool, tenantId, { readOnly: true, check: { keyId }, timeouts }, { maxWaiting: limits.maxWaiting })
      .catch(shedWhenSaturated(request))
    // Held as the request's transaction meanwhile, so that its deadline and a client leaving cancel it.
    request.tenantTransaction = trx
    if (abandoned.has(request)) trx.abort(clientGone())
    if (expired.has(request)) trx.abort(deadlineProblem())
    let binding: Binding
    try {
      binding = await trx.ready
    } catch (error) {
      throw trx.abortReason ?? error
    } finally {
      await release(request, false)
    }
    const found = identify(binding, credential, tenantId)
    if (isDenial(found)) throw deny(request, found.problem, found.reason, credential.key.prefix, found.extra)
    assertScope(request, found, credential.key.prefix)
    // A tenant being moved is not remembered: its shard is about to change (preHandler waits for its check).
    if (binding.status === 'active') {
      cacheIdentity(found, binding, credential, generation)
      request.confirmedKey = found
    }
  })

  fastify.addHook('preHandler', async (request, reply) => {
    const credential = request.tenantCredential
    if (credential === null) throw unauthorized('missing credentials')
    const prefix = credentialPrefix(credential)
    const tenantId = credential.kind === 'api_key'
      ? credential.key.tenantId
      : request.requestedTenantId ?? credential.claimedTenantId ?? await soleTenantOf(request, credential.userId)
    const readOnly = (request.method === 'GET' || request.method === 'HEAD') && request.routeOptions.config.writes !== true

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
    const trx = await startTenantTransaction(fastify.dbPool, tenantId, () => {
      generation = cache.generation
      if (credential.kind === 'api_key') {
        // Confirmed before the body was read, if the cache could not keep it (disabled, or invalidated since).
        cached = cachedKeyFor(credential.key) ?? request.confirmedKey ?? undefined
      } else {
        const member = cache.getMember(tenantId, credential.userId)
        if (member !== undefined) cached = { tenantId, actorType: 'user', actorId: member.userId, scopes: ROLE_SCOPES[member.role], role: member.role, shard: member.shard }
      }
      if (cached === undefined) return { readOnly, check, timeouts }
      const assumed = cached
      return {
        readOnly,
        check,
        timeouts,
        holdWrites: true,
        singleQuery: request.routeOptions.config.singleQuery === true,
        confirm: (binding: Binding) => { confirmCached(request, binding, credential, assumed, prefix) },
      }
    }, { maxWaiting: limits.maxWaiting }).catch(shedWhenSaturated(request))
    request.tenantTransaction = trx
    request.beforeCommit = []
    request.afterCommit = []
    if (abandoned.has(request)) trx.abort(clientGone())
    if (expired.has(request)) trx.abort(deadlineProblem())

    let identity: TenantIdentity
    if (cached !== undefined) {
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
      if (binding.status === 'active') cacheIdentity(identity, binding, credential, generation)
      assertScope(request, identity, prefix)
      recordUse(identity)
    }
    request.tenant = identity
    request.tenantDb = request.tenantTransaction.db.withPlugin(new TenantScopePlugin(fastify.tenantTables, { tenantId, shard: identity.shard }))
    registerScope(request.tenantDb, { tenantId, shard: identity.shard, assertOpen: () => { trx.assertOpen() } })
    request.log = request.log.child({ tenantId })
    reply.log = request.log // the "request completed" line carries the tenant too
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
    if (commit) {
      const after = request.afterCommit ?? []
      request.afterCommit = null
      for (const step of after) await step()
    }
    return payload
  })

  fastify.addHook('onResponse', async (request) => {
    if (request.tenantDeadline !== null) clearTimeout(request.tenantDeadline)
    await release(request, false)
  })
}

export default fp(tenantContext, { name: 'tenant-context', dependencies: ['db', 'errors', 'key-usage', 'credential-cache'] })
