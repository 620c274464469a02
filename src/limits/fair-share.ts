/**
 * A tenant's fair share of this instance's runtime pool: a tenant holds at most `share` transactions at
 * once (its `concurrent_requests` limit); past that its requests wait in a FIFO queue of its own, bounded
 * by `queueMax`, and are refused (TenantQueueFull) when it is full. They never reach the pool's own
 * queue, so a tenant in a hurry cannot take the places of the others there.
 *
 * Written here rather than taken from npm: p-limit, p-queue and async-sema all run (or guard) one
 * function call, while a slot here spans hooks (taken in preHandler, released when the transaction ends
 * in onSend or onResponse); none bounds its queue, async-sema and p-limit cannot take back one waiter
 * (a client that left, a deadline that passed), and one instance per tenant would still need this map
 * and its eviction. What remains is a counter and an ordered set per tenant.
 */

/** The tenant already holds its whole share and `queueMax` of its requests wait: refuse this one. */
export class TenantQueueFull extends Error {
  override name = 'TenantQueueFull'
  constructor (readonly share: number, readonly waiting: number) {
    super(`the tenant holds its ${share} connections and ${waiting} of its requests already wait`)
  }
}

interface TenantShare {
  readonly tenantId: string
  /** The share as the latest request read it (a change of the tenant's limits applies from then on). */
  share: number
  held: number
  /** Waiting slots in arrival order (a Set keeps insertion order and removes one in O(1)). */
  readonly queue: Set<Slot>
}

const GRANTED: Promise<void> = Promise.resolve()

/** One transaction's place in its tenant's share: held, or waiting its turn. */
export class Slot {
  #state: 'waiting' | 'held' | 'done'
  readonly #gate: FairShare
  readonly #entry: TenantShare
  /** Settles when the slot is held; rejects with the reason given to cancel(), or when released first. */
  readonly granted: Promise<void>
  #grant: () => void = () => {}
  #refuse: (reason: Error) => void = () => {}

  /** @internal Made by FairShare.take only. */
  constructor (gate: FairShare, entry: TenantShare, held: boolean) {
    this.#gate = gate
    this.#entry = entry
    this.#state = held ? 'held' : 'waiting'
    if (held) {
      this.granted = GRANTED
    } else {
      this.granted = new Promise<void>((resolve, reject) => {
        this.#grant = resolve
        this.#refuse = reject
      })
      this.granted.catch(() => {}) // a waiter released before its turn may have nobody awaiting it
    }
  }

  get state (): 'waiting' | 'held' | 'done' { return this.#state }

  /** @internal Called by the gate: the slot's turn has come. */
  grant (): void {
    this.#state = 'held'
    this.#grant()
  }

  /**
   * A waiting slot leaves the queue at once and `granted` rejects with `reason` (the client left, the
   * deadline passed). A slot already held is kept: its transaction is stopped otherwise, and its end
   * releases it.
   */
  cancel (reason: Error): void {
    if (this.#state !== 'waiting') return
    this.#state = 'done'
    this.#gate.leave(this.#entry, this)
    this.#refuse(reason)
  }

  /** Gives the slot back (to the tenant's next waiting request, if any). Idempotent: only the first call counts. */
  release (): void {
    if (this.#state === 'waiting') {
      this.cancel(new Error('the slot was released before its turn came'))
    } else if (this.#state === 'held') {
      this.#state = 'done'
      this.#gate.free(this.#entry)
    }
  }
}

/**
 * The gate of one instance. State is kept only for tenants that hold or await a slot: an entry is
 * dropped as soon as its tenant holds nothing and nobody waits, so it stays as small as the load.
 */
export class FairShare {
  readonly #queueMax: number
  readonly #tenants = new Map<string, TenantShare>()
  #waiting = 0

  /** `queueMax`: how many of one tenant's requests may wait for its share (TENANT_QUEUE_MAX). */
  constructor (queueMax: number) {
    this.#queueMax = queueMax
  }

  /**
   * A slot for one of `tenantId`'s transactions: held at once while the tenant holds fewer than
   * `share` and none of its requests wait, else queued behind them. A null share is no cap: nothing is
   * held (null). Below 1 counts as 1: a tenant is suspended by its status, not by its share.
   * Throws TenantQueueFull when `queueMax` of the tenant's requests already wait.
   */
  take (tenantId: string, share: number | null): Slot | null {
    if (share === null) return null
    let entry = this.#tenants.get(tenantId)
    if (entry === undefined) {
      entry = { tenantId, share: 1, held: 0, queue: new Set() }
      this.#tenants.set(tenantId, entry)
    }
    entry.share = Math.max(1, Math.floor(share))
    this.#grantWaiting(entry) // the share may have grown since they queued
    if (entry.held < entry.share) {
      entry.held++
      return new Slot(this, entry, true)
    }
    if (entry.queue.size >= this.#queueMax) throw new TenantQueueFull(entry.share, entry.queue.size)
    const slot = new Slot(this, entry, false)
    entry.queue.add(slot)
    this.#waiting++
    return slot
  }

  /** Requests waiting for their tenant's share, all tenants together (the metrics gauge). */
  get waiting (): number { return this.#waiting }

  /** Tenants that hold or await a slot now. */
  get tenants (): number { return this.#tenants.size }

  /** What one tenant holds and how many of its requests wait (zeros for a tenant the gate does not track). */
  usage (tenantId: string): { held: number, waiting: number } {
    const entry = this.#tenants.get(tenantId)
    return { held: entry?.held ?? 0, waiting: entry?.queue.size ?? 0 }
  }

  /** @internal A held slot was released. */
  free (entry: TenantShare): void {
    entry.held--
    this.#grantWaiting(entry)
    this.#forgetIdle(entry)
  }

  /** @internal A waiting slot left the queue before its turn. */
  leave (entry: TenantShare, slot: Slot): void {
    if (entry.queue.delete(slot)) this.#waiting--
    this.#forgetIdle(entry)
  }

  #grantWaiting (entry: TenantShare): void {
    while (entry.held < entry.share && entry.queue.size > 0) {
      const next = entry.queue.values().next().value!
      entry.queue.delete(next)
      this.#waiting--
      entry.held++
      next.grant()
    }
  }

  #forgetIdle (entry: TenantShare): void {
    if (entry.held === 0 && entry.queue.size === 0 && this.#tenants.get(entry.tenantId) === entry) {
      this.#tenants.delete(entry.tenantId)
    }
  }
}
