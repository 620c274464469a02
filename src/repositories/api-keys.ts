import type { Insertable, Kysely, Selectable } from 'kysely'
import type { ApiKeys, DB } from '../db/schema.ts'

type Executor = Kysely<DB>

/** A key that has not been revoked, as seen by the tenant the transaction is bound to. */
export async function findLiveApiKey (trx: Executor, id: string): Promise<Pick<Selectable<ApiKeys>, 'id' | 'tenant_id' | 'scopes' | 'secret_hash'> | undefined> {
  return trx
    .selectFrom('api_keys')
    .select(['id', 'tenant_id', 'scopes', 'secret_hash'])
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .executeTakeFirst()
}

export async function insertApiKey (trx: Executor, key: Insertable<ApiKeys>): Promise<Selectable<ApiKeys>> {
  return trx.insertInto('api_keys').values(key).returningAll().executeTakeFirstOrThrow()
}
