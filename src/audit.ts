import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Kysely } from 'kysely'
import type { DB } from './db/schema.ts'
import { newId } from './ids.ts'
import { insertAuditEvent, type AppendedAuditEvent } from './repositories/audit-events.ts'

/**
 * The head anchor: every audit event, once committed, is also written to the log with its chain
 * position and hash. The log lives outside the database, so a chain rewritten consistently by
 * someone with owner access (every hash recomputed, the head moved) no longer matches the hashes
 * logged at the time: GET /v1/audit-events/verify?anchor_seq=&anchor_hash= checks one of them.
 */
export function logAuditAppended (log: FastifyBaseLogger, tenantId: string, appended: AppendedAuditEvent): void {
  const { seq, hash } = appended
  log.info({ event: 'audit_appended', tenant: tenantId, seq, hash }, 'audit event appended')
}

/**
 * Records a change in the audit trail, in the request's own transaction: the event commits with the
 * change or not at all (and is logged, as the head anchor, only once it has committed). The actor
 * (key id or user id) and request id come from the pipeline; the time, from the database.
 */
export async function audit (
  request: FastifyRequest,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown> = {}
): Promise<void> {
  const actor = request.tenant
  if (actor === null) throw new Error('audit() needs an authenticated tenant request')
  const appended = await insertAuditEvent(request.db, {
    id: newId(),
    actor_type: actor.actorType,
    actor_id: actor.actorId,
    action,
    resource_type: resource.type,
    resource_id: resource.id,
    request_id: request.id,
    data: JSON.stringify(data),
  })
  request.afterCommit?.push(async () => { logAuditAppended(request.log, actor.tenantId, appended) })
}

/**
 * An operator action in the tenant's own audit trail, in the operator's transaction bound to that
 * tenant. The caller logs the result with logAuditAppended once that transaction has committed.
 */
export async function auditOperator (
  trx: Kysely<DB>,
  requestId: string,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown>
): Promise<AppendedAuditEvent> {
  return insertAuditEvent(trx, {
    id: newId(),
    actor_type: 'operator',
    actor_id: 'operator',
    action,
    resource_type: resource.type,
    resource_id: resource.id,
    request_id: requestId,
    data: JSON.stringify(data),
  })
}
