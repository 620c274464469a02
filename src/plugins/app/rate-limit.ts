import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { Counter } from 'prom-client'
import type { Config } from '../../config.ts'
import { HttpProblem, unavailable } from '../../errors.ts'
import type { Limits } from '../../limits/limits.ts'
import {
  addressKey, authFailuresPolicy, RateCounter, tenantPolicies, type RateDecision,
} from '../../limits/rate-limit.ts'
import { rateLimitHeaders } from '../../limits/rate-limit-headers.ts'

/**
 * Rate limits (docs/limits.md): each tenant's requests per second (burst) and per minute (sustained),
 * counted once a request's credential is confirmed (the tenant pipeline calls judgeTenant), and each
 * client address's failed authentications on /v1 and /admin/v1 (their scopes install
 * refuseBlockedAddress as their first onRequest hook; this plugin counts the failures as their refusals
 * are sent). Counts are shared through Redis when REDIS_URL is set, else kept in this process.
 *
 * When Redis cannot answer within REDIS_TIMEOUT_MS, requests go on uncounted (fail open), or with
 * RATE_LIMIT_FAIL_CLOSED get a 503; either way the failure is counted in a metric and logged, at most
 * one line every 10 seconds.
 */

declare module 'fastify' {
  interface FastifyInstance {
    rateLimits: RateLimits
  }
  interface FastifyRequest {
    /**
     * The request's credential was refused (src/auth/access-log.ts: logAccessDenied): counted against
     * its client address when the refusal is sent.
     */
    authenticationFailed: boolean
  }
}

export interface RateLimits {
  /**
   * Counts the request against its tenant's burst and sustained rate (`limits`, the tenant's in force):
   * sets the RateLimit headers, or throws the 429 (or, failing closed, the 503). Call it once per request,
   * and only once its credential is known good: a request anyone could make must not spend a tenant's budget.
   */
  judgeTenant: (request: FastifyRequest, reply: FastifyReply, tenantId: string, limits: Limits) => Promise<void>
  /** onRequest hook: 429 for a client address past its failed authentications, before any credential work. */
  refuseBlockedAddress: (request: FastifyRequest) => Promise<void>
}

export interface RateLimitOptions {
  /** REDIS_URL: counts shared by every instance; undefined: counted in this process. */
  redisUrl: string | undefined
  /** RATE_LIMIT_FAIL_CLOSED: 503 rather than uncounted when Redis cannot answer. */
  failClosed: boolean
  /** REDIS_TIMEOUT_MS: how long one decision waits for Redis. */
  timeoutMs: number
  /** AUTH_FAILURES_PER_MINUTE per client address; null: not limited. */
  authFailuresPerMinute: number | null
  /** Starts every Redis key (default rowfence:rl); tests give each file its own. */
  keyPrefix?: string | undefined
}

/** The plugin's options from the configuration (src/config.ts). */
export function rateLimitOptions (config: Config, keyPrefix?: string): RateLimitOptions {
  const perMinute = config.AUTH_FAILURES_PER_MINUTE
  return {
    redisUrl: config.REDIS_URL,
    failClosed: config.RATE_LIMIT_FAIL_CLOSED,
    timeoutMs: config.REDIS_TIMEOUT_MS,
    authFailuresPerMinute: perMinute === 'unlimited' ? null : perMinute,
    keyPrefix,
  }
}

/** How long start-up waits for a first connection to Redis before going on without it. */
const STARTUP_WAIT_MS = 2000
/** At most one warning about the store in this interval; the ones in between are counted in the next. */
const WARN_EVERY_MS = 10_000

export const rateLimited = (detail: string, retryAfterSeconds: number, headers: Record<string, string>): HttpProblem =>
  new HttpProblem(429, {
    slug: 'rate-limited',
    title: 'Too Many Requests',
    detail,
    headers: { 'retry-after': String(retryAfterSeconds), ...headers },
  })

export const tooManyFailedAuthentications = (retryAfterSeconds: number, headers: Record<string, string>):
HttpProblem => new HttpProblem(429, {
  slug: 'too-many-failed-authentications',
  title: 'Too Many Failed Authentications',
  detail: `too many failed authentications from your address; retry in ${retryAfterSeconds} s`,
  headers: { 'retry-after': String(retryAfterSeconds), ...headers },
})

async function rateLimitPlugin (fastify: FastifyInstance, options: RateLimitOptions): Promise<void> {
  fastify.decorateRequest('authenticationFailed', false)

  const storeErrors = new Counter({
    name: 'rowfence_rate_limit_store_errors_total',
    help: 'rate-limit decisions and counts Redis did not answer in time (let through uncounted, or 503 failing closed)',
    registers: [fastify.metrics],
  })
  /** A warning logged once every WARN_EVERY_MS at most, with the number of the ones left out since. */
  const throttled = (): ((error: Error, message: string) => void) => {
    let last = 0
    let suppressed = 0
    return (error, message) => {
      const now = Date.now()
      if (now - last < WARN_EVERY_MS) {
        suppressed++
        return
      }
      fastify.log.warn({ event: 'rate_limit_store_error', err: error, suppressed }, message)
      last = now
      suppressed = 0
    }
  }
  // Two, so that the connection's errors do not hide that requests are going through uncounted.
  const warnConnection = throttled()
  const warn = throttled()

  let redis: Redis | undefined
  if (options.redisUrl !== undefined) {
    redis = new Redis(options.redisUrl, {
      // Commands fail at once while the connection is down (nothing queued for later), and a command
      // sent on a connection that then drops is retried once at most; our own timeout bounds the rest.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: options.timeoutMs,
      connectTimeout: STARTUP_WAIT_MS,
      retryStrategy: (attempt) => Math.min(attempt * 200, 5000),
    })
    const client = redis
    client.on('error', (error: Error) => {
      warnConnection(error, 'rate-limit store (Redis): connection failed; retrying')
    })
    // A Redis that is down does not stop start-up: requests fail open (or closed) until it is back.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        client.off('ready', done)
        client.off('error', done)
        resolve()
      }
      const timer = setTimeout(done, STARTUP_WAIT_MS)
      client.once('ready', done)
      client.once('error', done)
    })
    if (client.status !== 'ready') fastify.log.warn('rate-limit store (Redis) not reachable at start-up')
    fastify.addHook('onClose', async () => {
      if (client.status === 'ready') {
        await client.quit().catch((error: unknown) => {
          fastify.log.warn({ err: error }, 'rate-limit store (Redis): QUIT failed; disconnecting')
        })
      }
      client.disconnect()
    })
  }

  const keyPrefix = options.keyPrefix ?? 'rowfence:rl'
  const counter = new RateCounter({ redis, keyPrefix, timeoutMs: options.timeoutMs })
  const perMinute = options.authFailuresPerMinute
  const authPolicy = perMinute === null ? undefined : authFailuresPolicy(perMinute)

  /** A decision the store could not make: let the request through, or refuse it when failing closed. */
  function storeFailed (decision: Extract<RateDecision, { outcome: 'unknown' }>): void {
    storeErrors.inc()
    warn(decision.error, options.failClosed
      ? 'rate-limit store (Redis) unavailable: refusing requests (RATE_LIMIT_FAIL_CLOSED)'
      : 'rate-limit store (Redis) unavailable: requests go through uncounted')
    if (options.failClosed) throw unavailable('rate limits cannot be checked right now; retry shortly', 1)
  }

  const rateLimits: RateLimits = {
    async judgeTenant (request, reply, tenantId, limits) {
      const policies = tenantPolicies(limits)
      if (policies.length === 0) return
      const decision = await counter.hit(policies, tenantId)
      if (decision.outcome === 'unknown') {
        storeFailed(decision)
        return
      }
      const headers = rateLimitHeaders(decision.states)
      if (decision.outcome === 'refused') {
        fastify.limitRefusals.record('rate', tenantId)
        const over = decision.states.filter((s) => s.remaining === 0).map((s) => s.policy.name)
        request.log.debug({ event: 'rate_limited', tenantId, policies: over, retryAfter: decision.retryAfterSeconds },
          'refused: the tenant is over its rate limit')
        await fastify.limitRefusals.hold(request, decision.retryAfterSeconds)
        throw rateLimited(`this tenant is over its ${over.join(' and ')} rate limit; ` +
          `retry in ${decision.retryAfterSeconds} s`, decision.retryAfterSeconds, headers)
      }
      reply.headers(headers)
    },

    async refuseBlockedAddress (request) {
      if (authPolicy === undefined) return
      const decision = await counter.check(authPolicy, addressKey(request.ip))
      if (decision.outcome === 'unknown') {
        storeFailed(decision)
        return
      }
      if (decision.outcome === 'refused') {
        fastify.limitRefusals.record('auth_failures', null)
        request.log.debug({ event: 'address_blocked', retryAfter: decision.retryAfterSeconds },
          'refused: too many failed authentications from this address')
        await fastify.limitRefusals.hold(request, decision.retryAfterSeconds)
        throw tooManyFailedAuthentications(decision.retryAfterSeconds, rateLimitHeaders(decision.states))
      }
    },
  }
  fastify.decorate('rateLimits', rateLimits)

  // A refused credential counts against its address before the refusal leaves, so that the address's
  // next request already sees it. Nothing is refused here: the response is a refusal already.
  fastify.addHook('onSend', async (request) => {
    if (!request.authenticationFailed || authPolicy === undefined) return
    request.authenticationFailed = false // counted once, even if onSend runs again for an error
    const decision = await counter.hit([authPolicy], addressKey(request.ip))
    if (decision.outcome === 'unknown') {
      storeErrors.inc()
      warn(decision.error, 'rate-limit store (Redis) unavailable: a failed authentication went uncounted')
    }
  })
}

export default fp(rateLimitPlugin, { name: 'rate-limit', dependencies: ['metrics', 'tenant-limits'] })
