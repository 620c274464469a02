import type { CompiledQuery, Kysely } from 'kysely'
import type { DB } from '../db/schema.ts'

type Executor = Kysely<DB>

/**
 * The credential lookups of the tenant pipeline, compiled (not run): the pipeline sends them in the
 * same round trip as BEGIN and the tenant binding. They run before the tenant's shard is known (and so
 * before the scoping plugin is installed), and therefore carry their tenant predicates themselves.
 * Each also returns the tenant's shard and status.
 */
export interface TenantAuthRow {
  shard: number
  tenant_status: string
}

export type ApiKeyAuthRow = TenantAuthRow & { id: string, scopes: string[], secret_hash: Buffer }

export function authenticateApiKey (db: Executor, tenantId: string, keyId: string): CompiledQuery<ApiKeyAuthRow> {
  return db.selectFrom('api_keys as k')
    .innerJoin('tenants as t', 't.id', 'k.tenant_id')
    .select(['k.id', 'k.scopes', 'k.secret_hash', 't.shard', 't.status as tenant_status'])
    .where('k.tenant_id', '=', tenantId)
    .where('t.id', '=', tenantId)
    .where('k.id', '=', keyId)
    .where('k.revoked_at', 'is', null)
    .compile()
}

export type MemberAuthRow = TenantAuthRow & { role: string }

export function authenticateMember (db: Executor, tenantId: string, userId: string): CompiledQuery<MemberAuthRow> {
  return db.selectFrom('memberships as m')
    .innerJoin('tenants as t', 't.id', 'm.tenant_id')
    .select(['m.role', 't.shard', 't.status as tenant_status'])
    .where('m.tenant_id', '=', tenantId)
    .where('t.id', '=', tenantId)
    .where('m.user_id', '=', userId)
    .compile()
}
