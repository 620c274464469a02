import type { ApiKeyRow } from '../repositories/api-keys.ts'
import type { MembershipRow } from '../repositories/memberships.ts'
import type { ApiKey, Member } from '../schemas/identity.ts'

export function toApiKey (row: ApiKeyRow): ApiKey {
  return {
    id: row.id,
    name: row.name,
    scopes: row.scopes as ApiKey['scopes'],
    prefix: row.prefix,
    owner_rights: row.owner_rights,
    created_at: row.created_at.toISOString(),
    last_used_at: row.last_used_at?.toISOString() ?? null,
  }
}

export function toMember (row: MembershipRow): Member {
  return {
    user_id: row.user_id,
    role: row.role as Member['role'],
    status: row.accepted_at === null ? 'pending' : 'active',
    created_at: row.created_at.toISOString(),
    accepted_at: row.accepted_at?.toISOString() ?? null,
  }
}
