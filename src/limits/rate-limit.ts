import type { Redis } from 'ioredis'
import ipaddr from 'ipaddr.js'
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible'
import type { Limits } from './limits.ts'
import type { PolicyState, RatePolicy } from './rate-limit-headers.ts'

/**
 * Request counting for the rate limits (docs/limits.md), with rate-limiter-flexible's fixed windows: a
 * window starts at the first request a key makes and lasts the policy's window; at most `quota` requests
 * count in it. The counts live in this process (RateLimiterMemory) or, with a Redis client, in Redis
 * (RateLimiterRedis: one Lua script per count, atomic), so that every instance sees the same counts.
 *
 * A limiter counts for one (quota, window): tenants on different plans use different limiters, keyed by
 * those numbers, under store keys that hold the tenant (or the client address) and not the quota, so that
 * with Redis a tenant whose plan changes keeps its count and is judged by its new quota at once.
 */

export type RateDecision =
  /** Counted, and within every policy. */
  | { outcome: 'allowed', states: PolicyState[] }
  /** Over at least one policy: retry after that many seconds (at least 1). */
  | { outcome: 'refused', states: PolicyState[], retryAfterSeconds: number }
  /** The store failed or did not answer within the timeout: nothing is known. */
  | { outcome: 'unknown', error: Error }

/** A tenant's policies: its burst (per second) and its sustained rate (per minute); an unlimited one has none. */
export function tenantPolicies (limits: Pick<Limits, 'requests_per_second' | 'burst'>): RatePolicy[] {
  const policies: RatePolicy[] = []
  if (limits.burst !== null) policies.push({ name: 'burst', quota: limits.burst, windowSeconds: 1 })
  if (limits.requests_per_second !== null) {
    policies.push({ name: 'sustained', quota: limits.requests_per_second * 60, windowSeconds: 60 })
  }
  return policies
}

/** The failed authentications a client address may make per minute. */
export const authFailuresPolicy = (perMinute: number): RatePolicy =>
  ({ name: 'failed_authentications', quota: perMinute, windowSeconds: 60 })

/**
 * The key a client address counts under: an IPv4 address as it is (an IPv4-mapped IPv6 one too), an IPv6
 * address by its /64, the smallest network a provider hands out: one host can use every address of its
 * /64, and would otherwise get a fresh budget for each.
 */
export function addressKey (ip: string): string {
  if (!ipaddr.isValid(ip)) return ip
  const address = ipaddr.process(ip) // unwraps IPv4-mapped IPv6
  if (address.kind() === 'ipv4') return address.toString()
  const parts = (address as ipaddr.IPv6).parts.slice(0, 4).map((part) => part.toString(16))
  return `${parts.join(':')}::/64`
}

/** The store did not answer within the timeout. */
export class StoreTimeout extends Error {
  override name = 'StoreTimeout'
  constructor (timeoutMs: number) {
    super(`the rate-limit store did not answer within ${timeoutMs} ms`)
  }
}

export interface RateCounterOptions {
  /** Counts in Redis, shared by every instance; undefined: in this process. */
  redis?: Redis | undefined
  /** Starts every store key (keeps deployments, or test files, that share one Redis apart). */
  keyPrefix: string
  /** How long a decision waits for Redis (REDIS_TIMEOUT_MS). */
  timeoutMs: number
}

const seconds = (ms: number): number => Math.max(0, Math.ceil(ms / 1000))

export class RateCounter {
  readonly #redis: Redis | undefined
  readonly #keyPrefix: string
  readonly #timeoutMs: number
  readonly #limiters = new Map<string, RateLimiterAbstract>()

  constructor (options: RateCounterOptions) {
    this.#redis = options.redis
    this.#keyPrefix = options.keyPrefix
    this.#timeoutMs = options.timeoutMs
  }

  /** Whether counts are shared through Redis. */
  get shared (): boolean { return this.#redis !== undefined }

  /** Counts one request under `key` against each policy. */
  async hit (policies: readonly RatePolicy[], key: string): Promise<RateDecision> {
    if (policies.length === 0) return { outcome: 'allowed', states: [] }
    const results = await this.#settle(Promise.allSettled(policies.map((p) => this.#limiter(p).consume(key))))
    if (results instanceof Error) return { outcome: 'unknown', error: results }
    const states: PolicyState[] = []
    let retryAfterSeconds = 0
    for (const [i, result] of results.entries()) {
      const policy = policies[i]!
      // The limiter resolves within the quota and rejects with the same kind of result beyond it; any
      // other rejection is the store's.
      const res = result.status === 'fulfilled' ? result.value : result.reason as unknown
      if (!(res instanceof RateLimiterRes)) {
        return { outcome: 'unknown', error: res instanceof Error ? res : new Error(String(res)) }
      }
      const resetSeconds = res.msBeforeNext > 0 ? seconds(res.msBeforeNext) : policy.windowSeconds
      states.push({ policy, remaining: res.remainingPoints, resetSeconds })
      if (result.status === 'rejected') retryAfterSeconds = Math.max(retryAfterSeconds, resetSeconds, 1)
    }
    return retryAfterSeconds > 0 ? { outcome: 'refused', states, retryAfterSeconds } : { outcome: 'allowed', states }
  }

  /** Where `key` stands on `policy`, counting nothing: refused once it has used the whole quota. */
  async check (policy: RatePolicy, key: string): Promise<RateDecision> {
    const res = await this.#settle(this.#limiter(policy).get(key).then((r) => r, (error: unknown) =>
      error instanceof Error ? error : new Error(String(error))))
    if (res instanceof Error) return { outcome: 'unknown', error: res }
    if (res === null || res.msBeforeNext <= 0) {
      return { outcome: 'allowed', states: [{ policy, remaining: policy.quota, resetSeconds: policy.windowSeconds }] }
    }
    const resetSeconds = seconds(res.msBeforeNext)
    const remaining = Math.max(0, policy.quota - res.consumedPoints)
    const states = [{ policy, remaining, resetSeconds }]
    if (remaining > 0) return { outcome: 'allowed', states }
    return { outcome: 'refused', states, retryAfterSeconds: Math.max(1, resetSeconds) }
  }

  /** In memory, the answer is immediate; from Redis, it is awaited REDIS_TIMEOUT_MS at most. */
  async #settle<T> (pending: Promise<T>): Promise<T | Error> {
    if (this.#redis === undefined) return pending
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<Error>((resolve) => {
      timer = setTimeout(() => { resolve(new StoreTimeout(this.#timeoutMs)) }, this.#timeoutMs)
    })
    try {
      return await Promise.race([pending, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  #limiter (policy: RatePolicy): RateLimiterAbstract {
    const id = `${policy.name}:${policy.quota}:${policy.windowSeconds}`
    let limiter = this.#limiters.get(id)
    if (limiter === undefined) {
      const options = {
        points: policy.quota,
        duration: policy.windowSeconds,
        keyPrefix: `${this.#keyPrefix}:${policy.name}:${policy.windowSeconds}`,
      }
      limiter = this.#redis === undefined
        ? new RateLimiterMemory(options)
        // Not ready (down, reconnecting): refused at once rather than queued (the client queues nothing either).
        : new RateLimiterRedis({ ...options, storeClient: this.#redis, rejectIfRedisNotReady: true })
      this.#limiters.set(id, limiter)
    }
    return limiter
  }
}
