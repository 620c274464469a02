import type { Scope } from './api-keys.ts'

export type MemberRole = 'owner' | 'admin' | 'member' | 'viewer'
export const MEMBER_ROLES: readonly MemberRole[] = ['owner', 'admin', 'member', 'viewer']

/** API.md: viewer → read; member → read, write; admin and owner → read, write, admin. */
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
  /** The member role, for users. */
  role: MemberRole | undefined
  /** Where the tenant's rows of the sharded tables live (see src/db/placement.ts). */
  shard: number
}

/** Owner-level rights: an owner, or a tenant API key with the admin scope (a service credential). */
export function actsAsOwner (identity: TenantIdentity): boolean {
  return identity.actorType === 'api_key' ? identity.scopes.includes('admin') : identity.role === 'owner'
}
