import type { Insertable, Kysely, Selectable } from 'kysely'
import type { DB, Memberships } from '../db/schema.ts'

type Executor = Kysely<DB>
export type MembershipRow = Selectable<Memberships>

export async function findMembershipByUser (trx: Executor, userId: string): Promise<MembershipRow | undefined> {
  return trx.selectFrom('memberships').selectAll().where('user_id', '=', userId).executeTakeFirst()
}

export async function insertMembership (trx: Executor, membership: Omit<Insertable<Memberships>, 'tenant_id'>): Promise<MembershipRow> {
  return trx.insertInto('memberships').values(membership).returningAll().executeTakeFirstOrThrow()
}

export async function listMemberships (trx: Executor, page: { limit: number, before?: string | undefined }): Promise<MembershipRow[]> {
  let query = trx.selectFrom('memberships').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

/**
 * Locks every owner membership of the tenant (FOR UPDATE), so two concurrent removals of the last
 * two owners serialise and the second sees that only one is left.
 */
export async function lockOwners (trx: Executor): Promise<string[]> {
  const rows = await trx.selectFrom('memberships').select('user_id').where('role', '=', 'owner').forUpdate().execute()
  return rows.map((r) => r.user_id)
}

export async function deleteMembership (trx: Executor, userId: string): Promise<MembershipRow | undefined> {
  return trx.deleteFrom('memberships').where('user_id', '=', userId).returningAll().executeTakeFirst()
}
