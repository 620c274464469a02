import type { Static } from '@sinclair/typebox'
import type { ErasureReceiptRow } from '../repositories/erasure-receipts.ts'
import type { ErasureReceiptSchema } from '../schemas/tenants.ts'

type ErasureReceipt = Static<typeof ErasureReceiptSchema>

export function toErasureReceipt (row: ErasureReceiptRow): ErasureReceipt {
  return {
    id: row.id,
    tenant_id: row.subject_tenant_id,
    slug: row.subject_slug,
    placement: row.placement as ErasureReceipt['placement'],
    requested_by: row.requested_by,
    request_id: row.request_id,
    started_at: row.started_at.toISOString(),
    finished_at: row.finished_at.toISOString(),
    rows_removed: row.rows_removed as Record<string, number>,
    partitions_dropped: row.partitions_dropped,
    verified: row.verified,
  }
}
