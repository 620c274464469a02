import type { Scope } from './api-keys.ts'
import type { MemberRole } from './identity.ts'

/**
 * Credentials verified recently, so that a request can send its statements right behind BEGIN and
 * bind_tenant() without waiting for the check's answer (one round trip instead of two). The cache
 * never authorizes on its own: bind_tenant() still reads the key or membership fresh in every
 * request, and the answer is confirmed before any result reaches the handler and before COMMIT
 * (TenantTransaction.confirmed), so a revocation is honoured on the very next request everywhere.
 * A stale entry costs at most a wasted, rolled-back statement. Kept small and current anyway:
 * - entries are used only while this instance's LISTEN connection is up (sql/0009's triggers notify
 *   every change to a key, a membership or a tenant); when it drops, the cache is emptied and off;
 * - a lookup that started before an invalidation cannot fill the cache after it (generation);
 * - no entry outlives its TTL;
 * - the presented secret is compared (constant time) with the cached hash before going ahead.
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

export class CredentialCache {
  readonly #ttlMs: number
  readonly #maxEntries: number
  readonly #keys = new Map<string, Entry<CachedKey>>()
  readonly #members = new Map<string, Entry<CachedMember>>()
  #enabled = false
  #generation = 0

  /** ttlMs 0 turns the cache off: every request then waits for its credential check. */
  constructor (ttlMs: number, maxEntries = 50_000) {
    this.#ttlMs = ttlMs
    this.#maxEntries = maxEntries
  }

  get enabled (): boolean { return this.#enabled && this.#ttlMs > 0 }
  /** Read before a lookup, passed to set(): an invalidation in between voids the fill. */
  get generation (): number { return this.#generation }

  enable (): void {
    this.clear()
    this.#enabled = true
  }

  disable (): void {
    this.#enabled = false
    this.clear()
  }

  clear (): void {
    this.#generation++
    this.#keys.clear()
    this.#members.clear()
  }

  static memberId (tenantId: string, userId: string): string { return `${tenantId}:${userId}` }

  #get<T> (map: Map<string, Entry<T>>, id: string): T | undefined {
    if (!this.enabled) return undefined
    const entry = map.get(id)
    if (entry === undefined) return undefined
    if (entry.expires > Date.now()) return entry.value
    map.delete(id)
    return undefined
  }

  #set<T> (map: Map<string, Entry<T>>, id: string, value: T, generation: number): void {
    if (!this.enabled || generation !== this.#generation) return
    if (map.size >= this.#maxEntries) map.delete(map.keys().next().value!) // the oldest
    map.set(id, { value, expires: Date.now() + this.#ttlMs })
  }

  getKey (keyId: string): CachedKey | undefined { return this.#get(this.#keys, keyId) }
  setKey (value: CachedKey, generation: number): void { this.#set(this.#keys, value.keyId, value, generation) }
  getMember (tenantId: string, userId: string): CachedMember | undefined {
    return this.#get(this.#members, CredentialCache.memberId(tenantId, userId))
  }

  setMember (value: CachedMember, generation: number): void {
    this.#set(this.#members, CredentialCache.memberId(value.tenantId, value.userId), value, generation)
  }

  /** Applies a rowfence_auth notification: `key:<id>`, `member:<tenant>:<user>` or `tenant:<id>`. */
  apply (payload: string): void {
    this.#generation++
    if (payload.startsWith('key:')) {
      this.#keys.delete(payload.slice(4))
    } else if (payload.startsWith('member:')) {
      this.#members.delete(payload.slice(7))
    } else if (payload.startsWith('tenant:')) {
      const tenantId = payload.slice(7)
      for (const [id, entry] of this.#keys) if (entry.value.tenantId === tenantId) this.#keys.delete(id)
      for (const [id, entry] of this.#members) if (entry.value.tenantId === tenantId) this.#members.delete(id)
    } else {
      this.clear()
    }
  }
}
