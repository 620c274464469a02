import type { Kysely } from 'kysely'
import type pg from 'pg'
import { auditOperator } from '../audit.ts'
import type { DB } from '../db/schema.ts'
import { findLiveApiKey, lockLiveAdminKeys, revokeApiKey, type LiveApiKey } from '../repositories/api-keys.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { lockTenant } from '../repositories/tenants.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** A revoked key's event data: what the key list showed of it, its id first (never a secret). */
export function revokedKeyState (key: LiveApiKey): Record<string, unknown> {
  return { id: key.id, name: key.name, prefix: key.prefix, scopes: key.scopes, owner_rights: key.owner_rights }
}

/** The key is the tenant's last live key with the admin scope: revoking it would lock the tenant out. */
export class LastAdminKey extends Error {
  override name = 'LastAdminKey'
  constructor () {
    super('this is the tenant\'s last API key with the admin scope; issue another one first ' +
      '(POST /admin/v1/tenants/:id/api-keys, or rowfence keys issue)')
  }
}

/**
 * Revokes one of the tenant's live keys in the caller's tenant transaction, under the rule that keeps a
 * tenant from locking itself out: its last live key with the admin scope stays until another exists
 * (LastAdminKey). The live admin keys are locked first (FOR UPDATE), so that two revocations at once
 * cannot together remove the last one. `authorize` runs once the key is known, before that rule: the
 * caller's own refusal (a tenant credential without owner rights). Undefined when the key is not live.
 */
export async function revokeLiveKey (
  db: Kysely<DB>, keyId: string, authorize?: (key: LiveApiKey) => Promise<void>
): Promise<LiveApiKey | undefined> {
  const adminKeys = await lockLiveAdminKeys(db)
  const key = await findLiveApiKey(db, keyId)
  if (key === undefined) return undefined
  await authorize?.(key)
  if (adminKeys.length === 1 && adminKeys[0] === key.id) throw new LastAdminKey()
  return await revokeApiKey(db, key.id) ? key : undefined
}

export type OperatorRevocation =
  | { outcome: 'no-tenant' }
  | { outcome: 'no-key' }
  | { outcome: 'revoked', appended: AppendedAuditEvent }

/**
 * Revokes one of a tenant's live API keys on the operator's behalf (a leaked key, a tenant that
 * cannot reach its own admin keys), in one tenant transaction with its `api_key.revoked` audit event
 * (actor: operator), under the same rule as a tenant's own revocation (revokeLiveKey). The caller waits
 * for the invalidation to reach the credential caches once this has committed.
 */
export async function revokeKeyAsOperator (
  pool: pg.Pool, tenantId: string, keyId: string, requestId: string
): Promise<OperatorRevocation> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    if (await lockTenant(db, tenantId) === undefined) return { outcome: 'no-tenant' }
    const target = await revokeLiveKey(db, keyId)
    if (target === undefined) return { outcome: 'no-key' }
    const appended = await auditOperator(db, requestId, 'api_key.revoked', { type: 'api_key', id: target.id }, {
      name: target.name, prefix: target.prefix, scopes: target.scopes, owner_rights: target.owner_rights,
    }, revokedKeyState(target))
    return { outcome: 'revoked', appended }
  })
}
