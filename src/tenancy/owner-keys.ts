import { createHash } from 'node:crypto'
import type { Kysely, Selectable } from 'kysely'
import type pg from 'pg'
import { generateApiKey, type Scope } from '../auth/api-keys.ts'
import { insertApiKey, type ApiKeyRow } from '../repositories/api-keys.ts'
import { auditOperator } from '../audit.ts'
import { toApiKey } from '../mappers/identity.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { canonicalJson } from '../plugins/app/idempotency.ts'
import { findTenantByCreationKey, forgetCreationKey, lockTenant } from '../repositories/tenants.ts'
import type { DB, Tenants } from '../db/schema.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** The tenant is being erased: its credentials are revoked and no new one may appear. */
export class TenantErasing extends Error {
  override name = 'TenantErasing'
  constructor () { super('the tenant is being erased; no key can be issued for it') }
}

/** An idempotency key of a tenant creation, used with another request. */
export class CreationKeyReused extends Error {
  override name = 'CreationKeyReused'
  constructor () { super('this idempotency-key was already used with a different request') }
}

/** What a tenant creation with an idempotency key records (sql/0016): hashes, never the key's response. */
export interface CreationKeys {
  keyHash: Buffer
  requestHash: Buffer
}

const sha256 = (value: string): Buffer => createHash('sha256').update(value).digest()

/** The key's and the effective request's hashes (the caller fills in defaults, e.g. the pooled placement). */
export function creationKeys (idempotencyKey: string, request: Record<string, unknown>): CreationKeys {
  return { keyHash: sha256(idempotencyKey), requestHash: sha256(canonicalJson(request)) }
}

/**
 * The tenant a creation with these keys made, if the key still counts (24 h): its repeat. undefined when
 * there is none — an expired key is forgotten first (in the tenant's own transaction: the registry's
 * policy lets the operator change only the tenant it binds), so that it may be used afresh. Throws
 * CreationKeyReused when the key made a tenant from another request.
 */
export async function repeatedCreation (
  ownerDb: Kysely<DB>, pool: pg.Pool, keys: CreationKeys
): Promise<string | undefined> {
  // The owner's registry policy shows it every tenant.
  const found = await findTenantByCreationKey(ownerDb, keys.keyHash)
  if (found === undefined) return undefined
  if (!found.key_live) {
    await withTenantTransaction(pool, found.id, async ({ db }) => forgetCreationKey(db, found.id, keys.keyHash))
    return undefined
  }
  if (!keys.requestHash.equals(found.creation_request_hash!)) throw new CreationKeyReused()
  return found.id
}

export interface OwnerKeyRequest {
  name: string
  scopes: Scope[]
  requestId: string
  /** More to say in the audit event (why the key was issued). */
  auditData?: Record<string, unknown>
}

export interface IssuedOwnerKey {
  tenant: Selectable<Tenants>
  row: ApiKeyRow
  /** The secret key: returned once, stored only as a hash. */
  key: string
  appended: AppendedAuditEvent
}

/**
 * An API key for an existing tenant, issued by the operator (a tenant that has lost every admin key
 * cannot make one itself), in one tenant transaction with its `api_key.created` audit event (actor:
 * operator). Owner rights when it has the admin scope, as the operator's initial key has. The tenant
 * row is locked in share mode first, so an erasure's revocation (which marks the tenant erasing
 * before revoking its keys) either comes first, and the key is refused, or waits and revokes it too.
 * A placement move is simply waited for, as any request of the tenant waits for it.
 * Returns undefined when there is no such tenant (never was, or erased); throws TenantErasing.
 */
export async function issueOwnerKey (
  pool: pg.Pool, tenantId: string, request: OwnerKeyRequest
): Promise<IssuedOwnerKey | undefined> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    const tenant = await lockTenant(db, tenantId)
    if (tenant === undefined) return undefined
    if (tenant.status === 'erasing') throw new TenantErasing()
    const key = generateApiKey(tenantId)
    const row = await insertApiKey(db, {
      id: key.id,
      name: request.name,
      prefix: key.prefix,
      secret_hash: key.secretHash,
      scopes: request.scopes,
      owner_rights: request.scopes.includes('admin'),
    })
    const appended = await auditOperator(db, request.requestId, 'api_key.created', { type: 'api_key', id: row.id }, {
      name: row.name, scopes: row.scopes, prefix: row.prefix, owner_rights: row.owner_rights, ...request.auditData,
    }, toApiKey(row))
    return { tenant, row, key: key.key, appended }
  })
}
