import type { EventRow } from '../repositories/events.ts'
import type { Event } from '../schemas/events.ts'

export function toEvent (row: EventRow): Event {
  return {
    id: row.id,
    type: row.type,
    resource: { type: row.resource_type, id: row.resource_id },
    data: row.data as Record<string, unknown>,
    request_id: row.request_id,
    actor: { type: row.actor_type, id: row.actor_id },
    created_at: row.created_at.toISOString(),
  }
}
