import type { Kysely } from 'kysely'
import type { DB } from '../db/schema.ts'
import type { Scope } from './api-keys.ts'

export type MemberRole = 'owner' | 'admin' | 'member' | 'viewer'

/** docs/api.md: viewer → read; member → read, write; admin and owner → read, write, admin. */
export const ROLE_SCOPES: Record<MemberRole, readonly Scope[]> = {
  viewer: ['read'],
  member: ['read', 'write'],
  admin: ['read', 'write', 'admin'],
  owner: ['read', 'write', 'admin'],
}

/** Who is acting, once the tenant pipeline has verified the credential inside the tenant's binding. */
export interface TenantIdentity {
  tenantId: string
  actorType: 'api_key' | 'user'
  /** The API key id, or the user id (`sub`). */
  actorId: string
  scopes: readonly Scope[]
  /** The member role, for users; 'pending' for an invitation not accepted yet (no scopes). */
  role: MemberRole | 'pending' | undefined
  /** Where the tenant's rows of the sharded tables live (see src/tenancy/shards.ts). */
  shard: number
}

/** The scopes of `wanted` that `held` does not include: what granting `wanted` would add. */
export function scopesBeyond (wanted: readonly Scope[], held: readonly Scope[]): Scope[] {
  return wanted.filter((scope) => !held.includes(scope))
}

/**
 * Owner rights (adding or removing an owner, revoking a key that has owner rights) belong to:
 * - a user whose membership role is owner;
 * - an API key whose row says owner_rights: the operator's initial key, and keys created with the
 *   admin scope by a credential that had owner rights itself (sql/0010_least_privilege.sql).
 * The admin scope alone is not enough: a member with the admin role can mint admin keys, and those
 * must not be a way to act as an owner. The key's row is read in the request's own transaction, so
 * a revoked key has no rights.
 */
export async function hasOwnerRights (identity: TenantIdentity, db: Kysely<DB>): Promise<boolean> {
  if (identity.actorType === 'user') return identity.role === 'owner'
  if (!identity.scopes.includes('admin')) return false
  const key = await db.selectFrom('api_keys').select('owner_rights')
    .where('id', '=', identity.actorId)
    .where('revoked_at', 'is', null)
    .executeTakeFirst()
  return key?.owner_rights === true
}
