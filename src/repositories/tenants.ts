import { sql, type Insertable, type Kysely, type Selectable } from 'kysely'
import type { DB, Tenants } from '../db/schema.ts'

type Executor = Kysely<DB>

export async function insertTenant (trx: Executor, tenant: Insertable<Tenants>): Promise<Selectable<Tenants>> {
  return trx.insertInto('tenants').values(tenant).returningAll().executeTakeFirstOrThrow()
}

/** The tenant bound to the transaction (RLS shows no other). */
export async function findTenant (trx: Executor, id: string): Promise<Selectable<Tenants> | undefined> {
  return trx.selectFrom('tenants').selectAll().where('id', '=', id).executeTakeFirst()
}

/** The tenant with this slug (the owner connection's registry policy shows every tenant). */
export async function findTenantBySlug (db: Executor, slug: string): Promise<Selectable<Tenants> | undefined> {
  return db.selectFrom('tenants').selectAll().where('slug', '=', slug).executeTakeFirst()
}

/** Every tenant, newest first: only the owner connection's registry policy can see them all. */
export async function listTenants (
  db: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<Array<Selectable<Tenants>>> {
  let query = db.selectFrom('tenants').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

/** Hours an idempotency key of a tenant creation counts for (like the tenant routes' keys). */
export const CREATION_KEY_HOURS = 24

/** The tenant a creation with this idempotency key (its hash) made, and whether the key still counts. */
export async function findTenantByCreationKey (
  db: Executor, keyHash: Buffer
): Promise<(Selectable<Tenants> & { key_live: boolean }) | undefined> {
  return db.selectFrom('tenants').selectAll()
    .select(sql<boolean>`created_at > now() - make_interval(hours => ${CREATION_KEY_HOURS})`.as('key_live'))
    .where('creation_key_hash', '=', keyHash)
    .executeTakeFirst()
}

/** Forgets the tenant's expired creation key, so that it may be used afresh (the tenant bound to trx). */
export async function forgetCreationKey (trx: Executor, id: string, keyHash: Buffer): Promise<void> {
  await trx.updateTable('tenants')
    .set({ creation_key_hash: null, creation_request_hash: null })
    .where('id', '=', id)
    .where('creation_key_hash', '=', keyHash)
    .execute()
}

/** The tenant bound to the transaction, its row locked against a status change until the transaction ends. */
export async function lockTenant (trx: Executor, id: string): Promise<Selectable<Tenants> | undefined> {
  return trx.selectFrom('tenants').selectAll().where('id', '=', id).forShare().executeTakeFirst()
}
