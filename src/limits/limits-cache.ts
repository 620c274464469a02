import type { Binding } from '../db/tenant-transaction.ts'
import { resolveLimits, type Limits } from './limits.ts'

interface Entry {
  limits: Limits
  expiresAt: number
}

/** Tenants whose limits one instance remembers; past it the oldest are forgotten. */
const MAX_ENTRIES = 50_000

/**
 * Each tenant's limits in force, as this instance last learnt them: rates and concurrency are judged
 * before a request has a connection, so they cannot wait for its transaction. Every request's binding
 * answers them fresh (bind_tenant, sql/0020) and they are remembered from it. A change of a tenant's
 * limits or of a plan notifies every instance (on the credential cache's channel), which forgets what it
 * had: the tenant's next request is then judged once its binding has answered. While the notification
 * listener is down, entries live `fallbackTtlMs` only. Quotas are not judged from here: the database
 * reads them in the write's own transaction.
 */
export class TenantLimitsCache {
  readonly #defaults: Limits
  readonly #entries = new Map<string, Entry>()
  #generation = 0
  /** Whether notifications arrive (the credential cache's listener is connected). */
  listening = false

  constructor (defaults: Limits, readonly ttlMs = 60_000, readonly fallbackTtlMs = 1000) {
    this.#defaults = defaults
  }

  get defaults (): Limits { return this.#defaults }

  /** The tenant's limits if this instance holds them fresh, without waiting. */
  cached (tenantId: string): Limits | undefined {
    const entry = this.#entries.get(tenantId)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= Date.now()) {
      this.#entries.delete(tenantId)
      return undefined
    }
    return entry.limits
  }

  /** Bumped by every notification: an answer read before one is not remembered after it. */
  get generation (): number { return this.#generation }

  /**
   * The limits a request's binding answered when asked (bind_tenant, sql/0022), resolved against the
   * defaults and remembered, unless a notification came in since `generation` was read (the answer may
   * predate it). Undefined when the binding was not asked.
   */
  remember (tenantId: string, answer: Binding['limits'], generation: number): Limits | undefined {
    if (answer === null) return undefined
    const limits = resolveLimits(this.#defaults, answer.plan, answer.overrides ?? null)
    if (generation === this.#generation) this.#remember(tenantId, limits)
    return limits
  }

  /** A notification on the shared channel: `limits:<tenant>` and `plan:<name>` concern this cache. */
  apply (payload: string): void {
    if (payload.startsWith('limits:')) {
      this.#generation++
      this.#entries.delete(payload.slice('limits:'.length))
    } else if (payload.startsWith('plan:') || payload.startsWith('tenant:')) {
      // Which tenants are on a plan is not kept here: a plan change is rare, so all are read again.
      this.#generation++
      if (payload.startsWith('plan:')) this.#entries.clear()
      else this.#entries.delete(payload.slice('tenant:'.length))
    }
  }

  /** Forgets everything (the listener was lost: changes may have been missed). */
  clear (): void {
    this.#generation++
    this.#entries.clear()
  }

  #remember (tenantId: string, limits: Limits): void {
    if (this.#entries.size >= MAX_ENTRIES) {
      const oldest = this.#entries.keys().next().value
      if (oldest !== undefined) this.#entries.delete(oldest)
    }
    this.#entries.set(tenantId, { limits, expiresAt: Date.now() + (this.listening ? this.ttlMs : this.fallbackTtlMs) })
  }
}
