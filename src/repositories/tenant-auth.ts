import type { Kysely } from 'kysely'
import type { DB } from '../db/schema.ts'

type Executor = Kysely<DB>

/**
 * The credential lookups of the tenant pipeline. They run first in the request's transaction, before
 * the tenant's shard is known (and so before the scoping plugin is installed), and therefore carry
 * their tenant predicates themselves. Each also returns the tenant's shard and status, in the same
 * single round trip.
 */
export interface TenantAuthRow {
  shard: number
  tenant_status: string
}

export async function authenticateApiKey (trx: Executor, tenantId: string, keyId: string): Promise<(TenantAuthRow & { id: string, scopes: string[], secret_hash: Buffer }) | undefined> {
  return trx.selectFrom('api_keys as k')
    .innerJoin('tenants as t', 't.id', 'k.tenant_id')
    .select(['k.id', 'k.scopes', 'k.secret_hash', 't.shard', 't.status as tenant_status'])
    .where('k.tenant_id', '=', tenantId)
    .where('t.id', '=', tenantId)
    .where('k.id', '=', keyId)
    .where('k.revoked_at', 'is', null)
    .executeTakeFirst()
}

export async function authenticateMember (trx: Executor, tenantId: string, userId: string): Promise<(TenantAuthRow & { role: string }) | undefined> {
  return trx.selectFrom('memberships as m')
    .innerJoin('tenants as t', 't.id', 'm.tenant_id')
    .select(['m.role', 't.shard', 't.status as tenant_status'])
    .where('m.tenant_id', '=', tenantId)
    .where('t.id', '=', tenantId)
    .where('m.user_id', '=', userId)
    .executeTakeFirst()
}
