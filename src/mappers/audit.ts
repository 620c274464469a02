import type { AuditEventRow } from '../repositories/audit-events.ts'
import type { AuditEvent } from '../schemas/audit.ts'

export function toAuditEvent (row: AuditEventRow): AuditEvent {
  return {
    id: row.id,
    seq: Number(row.seq),
    occurred_at: row.occurred_at.toISOString(),
    actor: { type: row.actor_type, id: row.actor_id },
    action: row.action,
    resource: { type: row.resource_type, id: row.resource_id },
    request_id: row.request_id,
    data: row.data as Record<string, unknown>,
    hash: row.hash.toString('hex'),
  }
}
