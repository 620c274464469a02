import type { Insertable, Kysely, Selectable } from 'kysely'
import type { DB, Tenants } from '../db/schema.ts'

type Executor = Kysely<DB>

export async function insertTenant (trx: Executor, tenant: Insertable<Tenants>): Promise<Selectable<Tenants>> {
  return trx.insertInto('tenants').values(tenant).returningAll().executeTakeFirstOrThrow()
}

/** The tenant bound to the transaction (RLS shows no other). */
export async function findTenant (trx: Executor, id: string): Promise<Selectable<Tenants> | undefined> {
  return trx.selectFrom('tenants').selectAll().where('id', '=', id).executeTakeFirst()
}

/** Every tenant, newest first: only the owner connection's registry policy can see them all. */
export async function listTenants (db: Executor, page: { limit: number, before?: string | undefined }): Promise<Array<Selectable<Tenants>>> {
  let query = db.selectFrom('tenants').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}
