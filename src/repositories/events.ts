import { sql, type Insertable, type Kysely, type RawBuilder, type Selectable } from 'kysely'
import type { DB, Events } from '../db/schema.ts'

type Executor = Kysely<DB>
export type EventRow = Selectable<Events>
export type EventInsert = Omit<Insertable<Events>, 'tenant_id' | 'shard' | 'created_at'>

/** An event's data as SQL: the state rendered by the database in the same statement (see insertEvent). */
export type EventDataSql = RawBuilder<unknown>

/**
 * Appends an event; the database decides its time and shard. `data` is the resource's API object, or
 * a query that renders it (a row written by an earlier statement still in flight on the connection).
 */
export async function insertEvent (
  trx: Executor, event: Omit<EventInsert, 'data'> & { data: unknown }
): Promise<void> {
  const data = isSql(event.data) ? sql<string>`(${event.data})::jsonb` : JSON.stringify(event.data)
  await trx.insertInto('events').values({ ...event, data }).execute()
}

const isSql = (value: unknown): value is EventDataSql =>
  typeof value === 'object' && value !== null && typeof (value as Partial<EventDataSql>).toOperationNode === 'function'

export interface EventFilter {
  limit: number
  before?: string | undefined
  /** An exact type, or a prefix when it ends with a dot. */
  type?: string | undefined
  createdAfter?: string | undefined
  createdBefore?: string | undefined
  /** Resource types left out (those the credential may not see). */
  hiddenResources?: readonly string[]
}

export async function listEvents (trx: Executor, filter: EventFilter): Promise<EventRow[]> {
  let query = trx.selectFrom('events').selectAll().orderBy('id', 'desc').limit(filter.limit)
  if (filter.before !== undefined) query = query.where('id', '<', filter.before)
  const type = filter.type
  if (type !== undefined) {
    // starts_with, not LIKE: `_` in a type would be a wildcard.
    query = type.endsWith('.') ? query.where(sql<boolean>`starts_with(type, ${type})`) : query.where('type', '=', type)
  }
  if (filter.createdAfter !== undefined) query = query.where('created_at', '>', new Date(filter.createdAfter))
  if (filter.createdBefore !== undefined) query = query.where('created_at', '<', new Date(filter.createdBefore))
  if (filter.hiddenResources !== undefined && filter.hiddenResources.length > 0) {
    query = query.where('resource_type', 'not in', filter.hiddenResources)
  }
  return query.execute()
}

export async function findEvent (trx: Executor, id: string): Promise<EventRow | undefined> {
  return trx.selectFrom('events').selectAll().where('id', '=', id).executeTakeFirst()
}
