import type { FullChainVerification } from '../tenancy/audit-verification.ts'
import type { AuditEventRow, ChainVerification } from '../repositories/audit-events.ts'
import type { AuditEvent, AuditVerification, FullAuditVerification } from '../schemas/audit.ts'

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

export function toAuditVerification (result: ChainVerification): AuditVerification {
  const broken = result.broken
  return {
    ok: broken === null,
    events: result.headSeq,
    first_broken: broken,
    complete: result.complete,
    // On a break: the positions before it (never past where the step got, nor below zero).
    verified_through: broken === null ? result.through.seq : Math.max(0, Math.min(broken.seq - 1, result.through.seq)),
    from_checkpoint: result.from,
    examined: result.examined,
    checkpoint_recorded: result.recorded,
  }
}

export function toFullAuditVerification (result: FullChainVerification): FullAuditVerification {
  return {
    ok: result.broken === null,
    events: result.events,
    examined: result.examined,
    batches: result.batches,
    first_broken: result.broken,
    checkpoint_recorded: result.checkpoint,
  }
}
