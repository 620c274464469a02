import type { TenantExportRow } from '../repositories/tenant-exports.ts'
import type { Export } from '../schemas/exports.ts'

const iso = (at: Date | null): string | null => at === null ? null : at.toISOString()

export function toExport (row: TenantExportRow): Export {
  const status = row.status === 'ready' && row.expired ? 'expired' : row.status as Export['status']
  const done = Number(row.rows_done)
  const total = row.rows_total === null ? null : Number(row.rows_total)
  // Rows written while the export runs can make done pass the count taken at its start: 100 means ready.
  const percent = status === 'ready' || status === 'expired'
    ? 100
    : total === null || total === 0 ? 0 : Math.min(99, Math.floor(done * 100 / total))
  return {
    id: row.id,
    status,
    progress: { rows_done: done, rows_total: total, bytes: Number(row.bytes), percent },
    error: row.error,
    requested_by: { type: row.actor_type, id: row.actor_id },
    created_at: row.created_at.toISOString(),
    started_at: iso(row.started_at),
    finished_at: iso(row.finished_at),
    expires_at: iso(row.expires_at),
    download_url: status === 'ready' ? `/v1/exports/${row.id}/download` : null,
  }
}
