import type { FastifyRequest } from 'fastify'
import { v7 as uuidv7 } from 'uuid'
import { insertAuditEvent } from './repositories/audit-events.ts'

/**
 * Records a change in the audit trail, in the request's own transaction: the event commits with the
 * change or not at all. The actor (key id or user id) and request id come from the pipeline.
 */
export async function audit (
  request: FastifyRequest,
  action: string,
  resource: { type: string, id: string },
  data: Record<string, unknown> = {}
): Promise<void> {
  const actor = request.tenant
  if (actor === null) throw new Error('audit() needs an authenticated tenant request')
  await insertAuditEvent(request.db, {
    id: uuidv7(),
    actor_type: actor.actorType,
    actor_id: actor.actorId,
    action,
    resource_type: resource.type,
    resource_id: resource.id,
    request_id: request.id,
    data: JSON.stringify(data),
  })
}
