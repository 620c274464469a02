import type { Scope } from './api-keys.ts'
import type { MemberRole } from './identity.ts'

/**
 * Credentials verified recently, per server instance, so that a request can send its own queries
 * right behind BEGIN and the binding instead of waiting for the credential check. The cache is a
 * guess, never the authority: the same round trip re-reads the key (or membership) and the tenant's
 * shard and status (bind_tenant), and the request commits only if that fresh answer agrees with what
 * was assumed — a key revoked a moment ago on another instance fails its very next request here too.
 * Entries expire after a bounded time and are dropped as soon as they disagree with the database.
 */
export interface CachedKey {
  tenantId: string
  keyId: string
  scopes: readonly Scope[]
  secretHash: Buffer
  shard: number
}

export interface CachedMember {
  tenantId: string
  userId: string
  role: MemberRole
  shard: number
}

interface Entry<T> { value: T, expires: number }

class TtlMap<T> {
  readonly #entries = new Map<string, Entry<T>>()
  constructor (private readonly ttlMs: number, private readonly maxEntries: number) {}

  get (id: string): T | undefined {
    if (this.ttlMs <= 0) return undefined
    const entry = this.#entries.get(id)
    if (entry === undefined) return undefined
    if (entry.expires > Date.now()) return entry.value
    this.#entries.delete(id)
    return undefined
  }

  set (id: string, value: T): void {
    if (this.ttlMs <= 0) return
    if (this.#entries.size >= this.maxEntries) this.#entries.delete(this.#entries.keys().next().value!) // oldest first
    this.#entries.set(id, { value, expires: Date.now() + this.ttlMs })
  }

  delete (id: string): void { this.#entries.delete(id) }
  get size (): number { return this.#entries.size }
}

export class CredentialCache {
  readonly keys: TtlMap<CachedKey>
  readonly members: TtlMap<CachedMember>

  /** ttlMs 0 turns the cache off: every request then waits for its credential check. */
  constructor (ttlMs: number, maxEntries = 50_000) {
    this.keys = new TtlMap(ttlMs, maxEntries)
    this.members = new TtlMap(ttlMs, maxEntries)
  }

  static memberId (tenantId: string, userId: string): string { return `${tenantId}:${userId}` }
}
