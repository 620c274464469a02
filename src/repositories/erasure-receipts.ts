import type { Kysely, Selectable } from 'kysely'
import type { DB, ErasureReceipts } from '../db/schema.ts'

export type ErasureReceiptRow = Selectable<ErasureReceipts>

/**
 * Erasure receipts, newest first (their ids are random, so the order is the finish time, then the id),
 * optionally of one erased tenant. Only the owner's policy shows them (sql/0007).
 */
export async function listErasureReceipts (
  db: Kysely<DB>, page: { limit: number, before?: string | undefined, tenantId?: string | undefined }
): Promise<ErasureReceiptRow[]> {
  let query = db.selectFrom('erasure_receipts').selectAll()
    .orderBy('finished_at', 'desc').orderBy('id', 'desc').limit(page.limit)
  if (page.tenantId !== undefined) query = query.where('subject_tenant_id', '=', page.tenantId)
  if (page.before !== undefined) {
    // The cursor names the last receipt of the previous page: continue after its (finish time, id).
    const before = page.before
    query = query.where((eb) => eb(
      eb.refTuple('finished_at', 'id'),
      '<',
      eb.selectFrom('erasure_receipts').select(['finished_at', 'id']).where('id', '=', before)
        .$asTuple('finished_at', 'id')
    ))
  }
  return query.execute()
}
