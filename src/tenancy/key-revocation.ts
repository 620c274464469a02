import type pg from 'pg'
import { auditOperator } from '../audit.ts'
import { lockLiveAdminKeys, revokeApiKey } from '../repositories/api-keys.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { lockTenant } from '../repositories/tenants.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** The key is the tenant's last live key with the admin scope: revoking it would lock the tenant out. */
export class LastAdminKey extends Error {
  override name = 'LastAdminKey'
  constructor () {
    super('this is the tenant\'s last API key with the admin scope; issue another one first ' +
      '(POST /admin/v1/tenants/:id/api-keys, or rowfence keys issue)')
  }
}

export type OperatorRevocation =
  | { outcome: 'no-tenant' }
  | { outcome: 'no-key' }
  | { outcome: 'revoked', appended: AppendedAuditEvent }

/**
 * Revokes one of a tenant's live API keys on the operator's behalf (a leaked key, a tenant that
 * cannot reach its own admin keys), in one tenant transaction with its `api_key.revoked` audit event
 * (actor: operator). The same rule as a tenant's own revocation holds: the last live admin key stays
 * until a replacement exists (LastAdminKey), and the live admin keys are locked first so two
 * revocations at once cannot together remove the last one. The caller waits for the invalidation to
 * reach the credential caches once this has committed.
 */
export async function revokeKeyAsOperator (
  pool: pg.Pool, tenantId: string, keyId: string, requestId: string
): Promise<OperatorRevocation> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    if (await lockTenant(db, tenantId) === undefined) return { outcome: 'no-tenant' }
    const adminKeys = await lockLiveAdminKeys(db)
    const target = await db.selectFrom('api_keys').select(['id', 'name', 'prefix', 'scopes', 'owner_rights'])
      .where('id', '=', keyId).where('revoked_at', 'is', null).executeTakeFirst()
    if (target === undefined) return { outcome: 'no-key' }
    if (adminKeys.length === 1 && adminKeys[0] === target.id) throw new LastAdminKey()
    if (!await revokeApiKey(db, target.id)) return { outcome: 'no-key' }
    const appended = await auditOperator(db, requestId, 'api_key.revoked', { type: 'api_key', id: target.id }, {
      name: target.name, prefix: target.prefix, scopes: target.scopes, owner_rights: target.owner_rights,
    })
    return { outcome: 'revoked', appended }
  })
}
