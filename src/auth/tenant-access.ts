import type { Binding } from '../db/tenant-transaction.ts'
import { forbidden, unauthorized, type HttpProblem } from '../errors.ts'
import { secretMatches, type ParsedApiKey, type Scope } from './api-keys.ts'
import type { CredentialCache } from './credential-cache.ts'
import type { TenantCredential } from './credentials.ts'
import { ROLE_SCOPES, type MemberRole, type TenantIdentity } from './identity.ts'

/**
 * Who a credential is in a tenant, decided from bind_tenant()'s fresh answer (the tenant pipeline,
 * src/plugins/app/tenant-context.ts), and what this instance remembers of the credentials it
 * confirmed (the CredentialCache).
 */

/** Why a credential is refused: the problem to answer with, and the reason to log. */
export interface Denial { problem: HttpProblem, reason: string, extra?: Record<string, unknown> }

export const isDenial = (value: TenantIdentity | Denial): value is Denial => 'problem' in value

/** Who the credential is in this tenant, from bind_tenant()'s fresh answer, or why it is refused. */
export function identify (
  binding: Binding, credential: TenantCredential, tenantId: string, acceptsPending = false
): TenantIdentity | Denial {
  const active = (binding.status === 'active' || binding.status === 'moving') && binding.shard !== null
  const shard = binding.shard!
  if (credential.kind === 'api_key') {
    const invalid = (reason: string): Denial => ({ problem: unauthorized('the API key is invalid or revoked'), reason })
    if (binding.key_secret_hash === null || binding.key_scopes === null) return invalid('unknown or revoked API key')
    if (!secretMatches(binding.key_secret_hash, credential.key.secretHash)) return invalid('wrong API key secret')
    if (!active) return invalid('tenant is being erased')
    const scopes = binding.key_scopes as Scope[]
    return { tenantId, actorType: 'api_key', actorId: credential.key.keyId, scopes, role: undefined, shard }
  }
  const extra = { requestedTenant: tenantId }
  if (binding.member_role === null || !active) {
    const reason = binding.member_role === null ? 'not a member' : 'tenant is being erased'
    return { problem: forbidden('you are not a member of this tenant'), reason, extra }
  }
  if (binding.member_role === 'pending') {
    if (!acceptsPending) {
      const detail = 'your membership of this tenant is pending: accept it first (POST /v1/membership/accept)'
      return { problem: forbidden(detail), reason: 'membership pending', extra }
    }
    return { tenantId, actorType: 'user', actorId: credential.userId, scopes: [], role: 'pending', shard }
  }
  const role = binding.member_role as MemberRole
  return { tenantId, actorType: 'user', actorId: credential.userId, scopes: ROLE_SCOPES[role], role, shard }
}

/** Whether a fresh answer still says what a cached credential assumed (same shard, role and scopes). */
export function sameIdentity (found: TenantIdentity, assumed: TenantIdentity): boolean {
  return found.shard === assumed.shard && found.role === assumed.role && found.scopes.join() === assumed.scopes.join()
}

/** The key as this instance confirmed it recently, if the presented key is that one (same tenant, same secret). */
export function cachedKeyIdentity (cache: CredentialCache, key: ParsedApiKey): TenantIdentity | undefined {
  const known = cache.getKey(key.keyId)
  if (known === undefined || known.tenantId !== key.tenantId || !secretMatches(known.secretHash, key.secretHash)) {
    return undefined
  }
  const { tenantId, keyId, scopes, shard } = known
  return { tenantId, actorType: 'api_key', actorId: keyId, scopes, role: undefined, shard }
}

/** The user's membership as this instance confirmed it recently. */
export function cachedMemberIdentity (
  cache: CredentialCache, tenantId: string, userId: string
): TenantIdentity | undefined {
  const member = cache.getMember(tenantId, userId)
  if (member === undefined) return undefined
  const { role, shard } = member
  return { tenantId, actorType: 'user', actorId: member.userId, scopes: ROLE_SCOPES[role], role, shard }
}

/** Remembers a credential the database just confirmed, so its next requests need not wait for the check. */
export function rememberIdentity (
  cache: CredentialCache, identity: TenantIdentity, binding: Binding, credential: TenantCredential, generation: number
): void {
  const { tenantId, scopes, shard } = identity
  if (credential.kind === 'api_key') {
    const secretHash = binding.key_secret_hash!
    cache.setKey({ tenantId, keyId: credential.key.keyId, scopes, secretHash, shard }, generation)
  } else if (identity.role !== undefined && identity.role !== 'pending') {
    cache.setMember({ tenantId, userId: credential.userId, role: identity.role, shard }, generation)
  }
}

/** The cache entry a credential fills: evicted when a fresh answer refuses or changes it. */
export function cacheEntryOf (credential: TenantCredential, tenantId: string): string {
  return credential.kind === 'api_key' ? `key:${credential.key.keyId}` : `member:${tenantId}:${credential.userId}`
}
