import type { Kysely, Selectable } from 'kysely'
import type pg from 'pg'
import { ALL_SCOPES, generateApiKey, type NewApiKey } from '../auth/api-keys.ts'
import { auditOperator } from '../audit.ts'
import type { DB, Tenants } from '../db/schema.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import { newId } from '../ids.ts'
import { logFailure, type FailureLog } from '../log-failure.ts'
import { insertApiKey } from '../repositories/api-keys.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { insertTenant } from '../repositories/tenants.ts'
import { withOperationLock } from './operation-lock.ts'
import {
  creationKeys, issueOwnerKey, repeatedCreation, type CreationKeys, type IssuedOwnerKey,
} from './owner-keys.ts'
import {
  claimShard, createShard, DEFAULT_DDL, pooledShardFor, releaseShard, type DdlOptions, type Placement,
} from './shards.ts'

/** The owner connection: the registry's policy shows it every tenant; a tenant transaction binds one. */
export interface OwnerDatabase {
  ownerDb: Kysely<DB>
  ownerPool: pg.Pool
}

export interface NewTenant {
  name: string
  slug: string
  /** Omitted: pooled. */
  placement?: Placement | undefined
}

export interface OnboardingOptions {
  /** Recorded with the audit events. */
  requestId: string
  /** A retry with the same key and request within 24 hours repeats the creation (sql/0016). */
  idempotencyKey?: string | undefined
  ddl?: DdlOptions
  /** Warnings: partitions left for the next sweep. */
  log?: FailureLog
}

export type Onboarded =
  /** A new tenant, its initial owner key (the secret returned this once) and the audit event. */
  | { outcome: 'created', tenant: Selectable<Tenants>, key: NewApiKey, appended: AppendedAuditEvent }
  /** A repeat of the creation with this idempotency key: that tenant, with a new owner key. */
  | { outcome: 'repeated', issued: IssuedOwnerKey }

/** Another tenant has the slug (and no creation with this idempotency key made it). */
export class SlugTaken extends Error {
  override name = 'SlugTaken'
  constructor () { super('a tenant with this slug already exists') }
}

const UNIQUE_VIOLATION = '23505'

/**
 * Onboards a tenant: its row, its initial admin key (with owner rights) and the `tenant.created`
 * audit event commit together in one transaction bound to the new tenant, as the owner, so that the
 * policies' WITH CHECK accepts exactly this tenant's rows. A dedicated tenant's partitions are made
 * first, in a short DDL transaction of their own (other tenants' queries on the shared parents queue
 * behind it for at most a lock_timeout), reserved for the tenant until the provisioning transaction
 * claims them; if that fails, they are removed (or, should even that fail, left to the next sweep).
 *
 * With an idempotency key, a repeat returns the tenant that key created with a new owner key (the
 * first key's secret was never stored). Throws SlugTaken, CreationKeyReused (the key with another
 * request), TenantErasing (the repeated tenant is being erased), PlacementBusy or SharedTablesBusy.
 */
export async function createTenant (
  db: OwnerDatabase, input: NewTenant, options: OnboardingOptions
): Promise<Onboarded> {
  const placement = input.placement ?? 'pooled'
  // The effective request: an omitted placement is the pooled one.
  const creation = options.idempotencyKey === undefined
    ? undefined
    : creationKeys(options.idempotencyKey, { name: input.name, slug: input.slug, placement })
  const repeated = await repeatCreation(db, creation, options.requestId)
  if (repeated !== undefined) return repeated
  // Cheap early answer for the common conflict (the unique key stays the guarantee): a dedicated
  // onboarding would otherwise create partitions only to remove them again.
  const taken = await db.ownerDb.selectFrom('tenants').select('id').where('slug', '=', input.slug).executeTakeFirst()
  if (taken !== undefined) {
    // A creation with this key may have committed since the look-up above.
    const again = await repeatCreation(db, creation, options.requestId)
    if (again !== undefined) return again
    throw new SlugTaken()
  }
  const id = newId()
  const key = generateApiKey(id)
  const provision = async (dedicatedShard?: number): Promise<Onboarded> =>
    withTenantTransaction(db.ownerPool, id, async ({ db: trx }) => {
      const tenant = await insertTenant(trx, {
        id,
        name: input.name,
        slug: input.slug,
        placement,
        shard: dedicatedShard ?? await pooledShardFor(trx, id),
        creation_key_hash: creation?.keyHash ?? null,
        creation_request_hash: creation?.requestHash ?? null,
      })
      if (dedicatedShard !== undefined) await claimShard(trx, dedicatedShard)
      // Said, not defaulted: a key that does not say has no owner rights (sql/0013_owner_rights_default.sql).
      await insertApiKey(trx, {
        id: key.id,
        name: 'initial admin key',
        prefix: key.prefix,
        secret_hash: key.secretHash,
        scopes: [...ALL_SCOPES],
        owner_rights: true,
      })
      const appended = await auditOperator(trx, options.requestId, 'tenant.created', { type: 'tenant', id },
        { slug: tenant.slug, placement, initial_key_prefix: key.prefix })
      return { outcome: 'created' as const, tenant, key, appended }
    })
  try {
    if (placement === 'pooled') return await provision()
    const ddl = options.ddl ?? DEFAULT_DDL
    return await withOperationLock(db.ownerPool, id, async (lock) => {
      const shard = await createShard(lock.client, id, 'onboarding', ddl, options.log)
      try {
        return await provision(shard)
      } catch (error) {
        // Best effort: partitions left reserved are removed by the next sweep.
        await releaseShard(lock.client, shard, ddl, options.log)
          .catch(logFailure(options.log, 'removing the partitions of a failed onboarding', { tenantId: id, shard }))
        throw error
      }
    }, options.log)
  } catch (error) {
    // Two at once with one idempotency key: the unique keys (slug, key) made this one wait for the
    // other to commit, and it repeats that one.
    if ((error as { code?: unknown }).code === UNIQUE_VIOLATION) {
      const again = await repeatCreation(db, creation, options.requestId)
      if (again !== undefined) return again
    }
    throw error
  }
}

/**
 * What the creation with these keys made, with a new owner key; undefined when nothing (any more):
 * no such creation, its key expired, or its tenant erased meanwhile, key and all.
 */
async function repeatCreation (
  db: OwnerDatabase, creation: CreationKeys | undefined, requestId: string
): Promise<Onboarded | undefined> {
  if (creation === undefined) return undefined
  const tenantId = await repeatedCreation(db.ownerDb, db.ownerPool, creation)
  if (tenantId === undefined) return undefined
  const issued = await issueOwnerKey(db.ownerPool, tenantId, {
    name: 'initial admin key (reissued on a repeated creation)',
    scopes: [...ALL_SCOPES],
    requestId,
    auditData: { reason: 'tenant creation repeated with its idempotency-key' },
  })
  return issued === undefined ? undefined : { outcome: 'repeated', issued }
}
