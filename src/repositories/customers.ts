import { sql, type Insertable, type Kysely, type Selectable, type Updateable } from 'kysely'
import type { Customers, DB } from '../db/schema.ts'

type Executor = Kysely<DB>
export type CustomerRow = Selectable<Customers>

// tenant_id is never passed in: the column defaults to current_tenant_id() and the policy's
// WITH CHECK refuses any other value, so a repository cannot write into another tenant.

export async function insertCustomer (
  trx: Executor,
  customer: Omit<Insertable<Customers>, 'tenant_id'>
): Promise<CustomerRow> {
  return trx.insertInto('customers').values(customer).returningAll().executeTakeFirstOrThrow()
}

export async function findCustomer (trx: Executor, id: string): Promise<CustomerRow | undefined> {
  return trx.selectFrom('customers').selectAll().where('id', '=', id).executeTakeFirst()
}

export async function listCustomers (
  trx: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<CustomerRow[]> {
  let query = trx.selectFrom('customers').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

export async function updateCustomer (
  trx: Executor,
  id: string,
  changes: Omit<Updateable<Customers>, 'tenant_id' | 'id' | 'created_at'>
): Promise<CustomerRow | undefined> {
  return trx
    .updateTable('customers')
    .set({ ...changes, updated_at: sql<Date>`now()` })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst()
}

export async function deleteCustomer (trx: Executor, id: string): Promise<boolean> {
  const result = await trx.deleteFrom('customers').where('id', '=', id).executeTakeFirst()
  return result.numDeletedRows > 0n
}
