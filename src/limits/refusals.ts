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

  constructor (registry: Registry) {
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

  /** A refusal of one of `tenantId`'s requests (null for a client address's failed authentications). */
  record (reason: RefusalReason, tenantId: string | null): void {
    this.#counter.inc({ reason })
    if (tenantId !== null && reason !== 'auth_failures') this.#sink?.(tenantId, reason)
  }
}
