import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Kysely } from 'kysely'
import type { DB } from './db/schema.ts'
import { inSendOrder } from './db/in-send-order.ts'
import { newId } from './ids.ts'
import { insertAuditEvent, type AppendedAuditEvent } from './repositories/audit-events.ts'
import { insertEvent, type EventDataSql } from './repositories/events.ts'

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
 * Records a change in the audit trail and as an event (GET /v1/events, the outbox), both in the
 * request's own transaction: they commit with the change or not at all (the audit event is logged,
 * as the head anchor, only once it has committed). Every change to a tenant's resources calls this,
 * so none can write one record without the other. `state` is the resource as the API returns it
 * after the change (or SQL rendering it, see insertEvent); for a deletion, its id. Both inserts
 * leave at once (the connection pipelines them). The actor (key id or user id) and request id come
 * from the pipeline; the time, from the database.
 */
export async function audit (
  request: FastifyRequest,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown>,
  state: object | EventDataSql
): Promise<void> {
  const actor = request.tenant
  if (actor === null) throw new Error('audit() needs an authenticated tenant request')
  const who = { actor_type: actor.actorType, actor_id: actor.actorId, request_id: request.id }
  const [appended] = await inSendOrder(
    insertAuditEvent(request.db, {
      id: newId(),
      ...who,
      action,
      resource_type: resource.type,
      resource_id: resource.id,
      data: JSON.stringify(data),
    }),
    insertEvent(request.db, {
      id: newId(), ...who, type: action, resource_type: resource.type, resource_id: resource.id, data: state,
    })
  )
  request.afterCommit?.push(async () => { logAuditAppended(request.log, actor.tenantId, appended) })
}

/**
 * An operator action in the tenant's own audit trail, in the operator's transaction bound to that
 * tenant. The caller logs the result with logAuditAppended once that transaction has committed.
 * `state`: when the action changes one of the tenant's resources, its API state, recorded as an event.
 */
export async function auditOperator (
  trx: Kysely<DB>,
  requestId: string,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown>,
  state?: object
): Promise<AppendedAuditEvent> {
  return auditAs(trx, { type: 'operator', id: 'operator' }, requestId, action, resource, data, state)
}

/**
 * A change made by rowfence itself (the webhook worker disabling a failing endpoint), in the job's
 * transaction bound to the tenant; `requestId` is then the job's id.
 */
export async function auditSystem (
  trx: Kysely<DB>,
  jobId: string,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown>,
  state: object
): Promise<AppendedAuditEvent> {
  return auditAs(trx, { type: 'system', id: 'worker' }, jobId, action, resource, data, state)
}

async function auditAs (
  trx: Kysely<DB>,
  actor: { type: 'operator' | 'system', id: string },
  requestId: string,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown>,
  state?: object
): Promise<AppendedAuditEvent> {
  if (state !== undefined) {
    await insertEvent(trx, {
      id: newId(),
      actor_type: actor.type,
      actor_id: actor.id,
      request_id: requestId,
      type: action,
      resource_type: resource.type,
      resource_id: resource.id,
      data: state,
    })
  }
  return insertAuditEvent(trx, {
    id: newId(),
    actor_type: actor.type,
    actor_id: actor.id,
    action,
    resource_type: resource.type,
    resource_id: resource.id,
    request_id: requestId,
    data: JSON.stringify(data),
  })
}
