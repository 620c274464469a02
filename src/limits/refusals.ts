import type { FastifyRequest } from 'fastify'
import { Counter, type Registry } from 'prom-client'

/**
 * Why a request was refused for its load rather than its content: its tenant's rate, its tenant's
 * share of the database, a quota, or its client address's failed authentications.
 */
export type RefusalReason = 'rate' | 'concurrency' | 'quota' | 'auth_failures'

/** Where per-tenant refusals are tallied for the operator (the usage meter: top tenants by refusals). */
export type TenantRefusalSink = (tenantId: string, reason: Exclude<RefusalReason, 'auth_failures'>) => void

/**
 * Counts refusals: in the metrics by reason only (one series per reason, however many tenants), and per
 * tenant through the sink, which writes them with the tenant's usage.
 */
export class Refusals {
  readonly #counter: Counter<'reason'>
  #sink: TenantRefusalSink | undefined

  readonly #delayMs: number

  /** `delayMs`: how long a refusal that holds nothing waits before it is sent (LIMIT_REFUSAL_DELAY_MS). */
  constructor (registry: Registry, delayMs = 0) {
    this.#delayMs = delayMs
    this.#counter = new Counter({
      name: 'rowfence_limit_refusals_total',
      help: 'requests refused by a limit, by reason (rate, concurrency, quota, auth_failures)',
      labelNames: ['reason'],
      registers: [registry],
    })
    for (const reason of ['rate', 'concurrency', 'quota', 'auth_failures'] as const) this.#counter.inc({ reason }, 0)
  }

  /** Set once, by the usage meter. */
  setSink (sink: TenantRefusalSink): void { this.#sink = sink }

  /**
   * Waits before a refusal for load is sent: up to the configured delay, never past `retryAfterSeconds`,
   * and not at all while the request holds a transaction (a connection). A client that retries at once,
   * without reading Retry-After, then sends one request per delay on each connection instead of as many as
   * the server can refuse: its retry loop does not take the CPU the other tenants' requests need. A
   * held refusal costs its socket and a timer; it ends early when the client leaves.
   */
  async hold (request: FastifyRequest, retryAfterSeconds: number): Promise<void> {
    const ms = Math.min(this.#delayMs, retryAfterSeconds * 1000)
    if (ms <= 0 || (request as { tenantTransaction?: unknown }).tenantTransaction != null) return
    const socket = request.raw.socket as NodeJS.EventEmitter | undefined
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        socket?.off('close', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      socket?.once('close', done)
    })
  }

  /** A refusal of one of `tenantId`'s requests (null for a client address's failed authentications). */
  record (reason: RefusalReason, tenantId: string | null): void {
    this.#counter.inc({ reason })
    if (tenantId !== null && reason !== 'auth_failures') this.#sink?.(tenantId, reason)
  }
}
