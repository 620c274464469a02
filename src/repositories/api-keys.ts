import { sql, type Insertable, type Kysely, type Selectable } from 'kysely'
import type { ApiKeys, DB } from '../db/schema.ts'

type Executor = Kysely<DB>
export type ApiKeyRow = Selectable<ApiKeys>

export async function insertApiKey (trx: Executor, key: Omit<Insertable<ApiKeys>, 'tenant_id'>): Promise<ApiKeyRow> {
  return trx.insertInto('api_keys').values(key).returningAll().executeTakeFirstOrThrow()
}

export async function listLiveApiKeys (
  trx: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<ApiKeyRow[]> {
  let query = trx.selectFrom('api_keys').selectAll().where('revoked_at', 'is', null)
    .orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

/**
 * Locks the tenant's live keys that carry the admin scope (FOR UPDATE), so concurrent revocations
 * cannot together remove the last one.
 */
export async function lockLiveAdminKeys (trx: Executor): Promise<string[]> {
  const rows = await trx.selectFrom('api_keys').select('id')
    .where('revoked_at', 'is', null)
    .where((eb) => eb(eb.val('admin'), '=', eb.fn.any('scopes')))
    .forUpdate()
    .execute()
  return rows.map((r) => r.id)
}

/** A live key's public fields (never its secret hash); its id is the database's spelling. */
export type LiveApiKey = Pick<ApiKeyRow, 'id' | 'name' | 'prefix' | 'scopes' | 'owner_rights'>

/** The live (unrevoked) key with this id in the transaction's tenant; undefined when there is none. */
export async function findLiveApiKey (trx: Executor, id: string): Promise<LiveApiKey | undefined> {
  return trx.selectFrom('api_keys').select(['id', 'name', 'prefix', 'scopes', 'owner_rights'])
    .where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst()
}

/** Revokes a live key; false when there is no such live key in this tenant. */
export async function revokeApiKey (trx: Executor, id: string): Promise<boolean> {
  const result = await trx.updateTable('api_keys')
    .set({ revoked_at: sql<Date>`now()` })
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .executeTakeFirst()
  return result.numUpdatedRows > 0n
}
