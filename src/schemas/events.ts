import { Type, type Static } from '@sinclair/typebox'
import { Page, PageQuerySchema, Timestamp, Uuid } from './common.ts'

export const EventSchema = Type.Object({
  id: Uuid,
  type: Type.String({ description: 'what happened, e.g. invoice.finalized' }),
  resource: Type.Object({ type: Type.String(), id: Type.String() }),
  data: Type.Record(Type.String(), Type.Unknown(), {
    description: "the resource's state after the change, exactly as the API returns it (never a secret); for a " +
      'deletion, its id',
  }),
  request_id: Type.Union([Type.String(), Type.Null()], { description: 'the request that made the change' }),
  actor: Type.Object({ type: Type.String({ description: 'api_key, user or operator' }), id: Type.String() }),
  created_at: Timestamp,
}, { $id: 'Event', title: 'Event', description: "a change to one of the tenant's resources" })
export type Event = Static<typeof EventSchema>

export const EventPage = Page(EventSchema)

export const EventListQuerySchema = Type.Object({
  ...PageQuerySchema.properties,
  type: Type.Optional(Type.String({
    pattern: '^[a-z_]{1,50}\\.([a-z_]{1,50})?$',
    maxLength: 101,
    description: 'an event type (invoice.finalized), or a prefix ending in a dot (invoice.) for all of a resource\'s',
  })),
  created_after: Type.Optional(Type.String({
    format: 'date-time', maxLength: 64, description: 'only events created after this (exclusive)',
  })),
  created_before: Type.Optional(Type.String({
    format: 'date-time', maxLength: 64, description: 'only events created before this (exclusive)',
  })),
}, { additionalProperties: false })
