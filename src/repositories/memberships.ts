import { sql, type Insertable, type Kysely, type Selectable } from 'kysely'
import type { DB, Memberships } from '../db/schema.ts'

type Executor = Kysely<DB>
export type MembershipRow = Selectable<Memberships>

export async function findMembershipByUser (trx: Executor, userId: string): Promise<MembershipRow | undefined> {
  return trx.selectFrom('memberships').selectAll().where('user_id', '=', userId).executeTakeFirst()
}

export async function insertMembership (
  trx: Executor,
  membership: Omit<Insertable<Memberships>, 'tenant_id'>
): Promise<MembershipRow> {
  return trx.insertInto('memberships').values(membership).returningAll().executeTakeFirstOrThrow()
}

export async function listMemberships (
  trx: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<MembershipRow[]> {
  let query = trx.selectFrom('memberships').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

/**
 * The member's row, locked (FOR UPDATE) until the transaction ends: a decision taken on its role (who
 * may change or remove it) cannot be overtaken by a concurrent change of that role.
 */
export async function lockMembershipByUser (trx: Executor, userId: string): Promise<MembershipRow | undefined> {
  return trx.selectFrom('memberships').selectAll().where('user_id', '=', userId).forUpdate().executeTakeFirst()
}

/**
 * Locks every owner membership of the tenant (FOR UPDATE), so two concurrent removals of the last
 * two owners serialise and the second sees that only one is left.
 */
export async function lockOwners (trx: Executor): Promise<string[]> {
  // Accepted owners only: an invited owner who has not accepted cannot stand in for the last one.
  const rows = await trx.selectFrom('memberships').select('user_id')
    .where('role', '=', 'owner').where('accepted_at', 'is not', null).forUpdate().execute()
  return rows.map((r) => r.user_id)
}

/**
 * Accepts the user's own pending membership: the row as it is afterwards, and whether this call
 * accepted it (false when it was accepted before, by this request's predecessor for instance).
 */
export async function acceptMembership (
  trx: Executor,
  userId: string
): Promise<{ row: MembershipRow, acceptedNow: boolean } | undefined> {
  const accepted = await trx.updateTable('memberships').set({ accepted_at: sql<string>`now()` })
    .where('user_id', '=', userId).where('accepted_at', 'is', null).returningAll().executeTakeFirst()
  if (accepted !== undefined) return { row: accepted, acceptedNow: true }
  const row = await findMembershipByUser(trx, userId)
  return row === undefined ? undefined : { row, acceptedNow: false }
}

/** Gives a member another role (a pending invitation stays pending); undefined when there is no such member. */
export async function updateMembershipRole (
  trx: Executor,
  userId: string,
  role: string
): Promise<MembershipRow | undefined> {
  return trx.updateTable('memberships').set({ role }).where('user_id', '=', userId).returningAll().executeTakeFirst()
}

export async function deleteMembership (trx: Executor, userId: string): Promise<MembershipRow | undefined> {
  return trx.deleteFrom('memberships').where('user_id', '=', userId).returningAll().executeTakeFirst()
}
