import { Type, type Static } from '@sinclair/typebox'
import { Page, PageQuerySchema, Ref, Text, Timestamp, Uuid } from './common.ts'

/** 'invoice.finalized', every event of a resource ('invoice.*'), or every event ('*'). */
export const EVENT_TYPE_PATTERN = '^(\\*|[a-z_]{1,50}\\.(\\*|[a-z_]{1,50}))$'

const EventTypePattern = Type.String({
  pattern: EVENT_TYPE_PATTERN,
  maxLength: 101,
  description: "an event type (invoice.finalized), all of a resource's (invoice.*), or every event (*)",
})
const EventTypes = Type.Array(EventTypePattern, {
  minItems: 1, maxItems: 50, uniqueItems: true, description: 'the event types delivered to the endpoint',
})
const Url = Text({
  minLength: 1,
  maxLength: 2048,
  description: 'where events are POSTed: https, and not a private, loopback or link-local address',
})
const Description = Text({ maxLength: 500 })
const EndpointStatus = Type.Union([Type.Literal('enabled'), Type.Literal('disabled')], {
  description: 'disabled: receives nothing; set by you, or by the server after failing for too long',
})

const endpointFields = {
  id: Uuid,
  url: Type.String(),
  description: Type.String(),
  event_types: Type.Array(Type.String()),
  status: EndpointStatus,
  disabled_reason: Type.Union([Type.String(), Type.Null()], { description: 'why the server disabled it' }),
  failing_since: Type.Union([Timestamp, Type.Null()], {
    description: 'the first failed attempt since the last success; null while deliveries succeed',
  }),
  previous_secret_expires_at: Type.Union([Timestamp, Type.Null()], {
    description: 'after a rotation, until when the previous secret signs too',
  }),
  created_at: Timestamp,
  updated_at: Timestamp,
}

export const WebhookEndpointSchema = Type.Object(endpointFields, {
  $id: 'WebhookEndpoint', title: 'WebhookEndpoint', description: 'where the tenant receives its events',
})
export type WebhookEndpoint = Static<typeof WebhookEndpointSchema>

export const WebhookEndpointWithSecretSchema = Type.Object({
  ...endpointFields,
  secret: Type.String({
    description: 'the signing secret (whsec_...): shown in this response only, stored encrypted',
  }),
}, {
  $id: 'WebhookEndpointWithSecret',
  title: 'WebhookEndpointWithSecret',
  description: 'an endpoint with its new signing secret, shown once',
})

export const WebhookEndpointPage = Page(WebhookEndpointSchema)

export const CreateWebhookEndpointSchema = Type.Object({
  url: Url,
  event_types: EventTypes,
  description: Type.Optional(Description),
}, {
  additionalProperties: false,
  examples: [{
    url: 'https://hooks.example.com/rowfence',
    event_types: ['invoice.finalized', 'customer.*'],
    description: 'accounting',
  }],
})
export type CreateWebhookEndpoint = Static<typeof CreateWebhookEndpointSchema>

export const UpdateWebhookEndpointSchema = Type.Object({
  url: Type.Optional(Url),
  event_types: Type.Optional(EventTypes),
  description: Type.Optional(Description),
  status: Type.Optional(EndpointStatus),
}, { additionalProperties: false, minProperties: 1, examples: [{ status: 'enabled' }] })
export type UpdateWebhookEndpoint = Static<typeof UpdateWebhookEndpointSchema>

export const WebhookAttemptSchema = Type.Object({
  attempt: Type.Integer({ description: '1 for the first' }),
  started_at: Timestamp,
  status_code: Type.Union([Type.Integer(), Type.Null()], { description: 'null when no response arrived' }),
  latency_ms: Type.Integer(),
  error: Type.Union([Type.String(), Type.Null()]),
  response_excerpt: Type.String({ description: 'the start of the response body' }),
}, { $id: 'WebhookAttempt', title: 'WebhookAttempt' })
export type WebhookAttempt = Static<typeof WebhookAttemptSchema>

const DeliveryStatus = Type.Union([
  Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('canceled'),
])

export const WebhookDeliverySchema = Type.Object({
  id: Uuid,
  endpoint_id: Uuid,
  event_id: Uuid,
  event_type: Type.String(),
  status: DeliveryStatus,
  attempts: Type.Integer({ description: 'attempts made so far' }),
  next_attempt_at: Type.Union([Timestamp, Type.Null()]),
  last_attempt_at: Type.Union([Timestamp, Type.Null()]),
  created_at: Timestamp,
  attempts_detail: Type.Array(Ref(WebhookAttemptSchema), { description: 'every attempt, first to last' }),
}, { $id: 'WebhookDelivery', title: 'WebhookDelivery', description: 'one event sent to one endpoint' })
export type WebhookDelivery = Static<typeof WebhookDeliverySchema>

export const WebhookDeliveryPage = Page(WebhookDeliverySchema)

export const DeliveryListQuerySchema = Type.Object({
  ...PageQuerySchema.properties,
  status: Type.Optional(DeliveryStatus),
}, { additionalProperties: false })

export const RedeliverSchema = Type.Object({
  endpoint_id: Type.Optional(Uuid),
}, {
  additionalProperties: false,
  description: 'without endpoint_id: to every enabled endpoint subscribed to the event type',
  examples: [{}],
})

export const RedeliveryResultSchema = Type.Object({
  data: Type.Array(Ref(WebhookDeliverySchema)),
}, { $id: 'WebhookRedelivery', title: 'WebhookRedelivery', description: 'the deliveries queued' })
