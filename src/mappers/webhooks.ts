import type {
  WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow,
} from '../repositories/webhook-endpoints.ts'
import type { WebhookAttempt, WebhookDelivery, WebhookEndpoint } from '../schemas/webhooks.ts'

/** The endpoint as the API shows it: never its sealed secrets. */
export function toWebhookEndpoint (row: WebhookEndpointRow): WebhookEndpoint {
  return {
    id: row.id,
    url: row.url,
    description: row.description,
    event_types: row.event_types,
    status: row.status as WebhookEndpoint['status'],
    disabled_reason: row.disabled_reason,
    failing_since: row.failing_since?.toISOString() ?? null,
    previous_secret_expires_at: row.previous_secret_expires_at?.toISOString() ?? null,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  }
}

export function toWebhookAttempt (row: WebhookAttemptRow): WebhookAttempt {
  return {
    attempt: row.attempt,
    started_at: row.started_at.toISOString(),
    status_code: row.status_code,
    latency_ms: row.latency_ms,
    error: row.error,
    response_excerpt: row.response_excerpt,
  }
}

export function toWebhookDelivery (row: WebhookDeliveryRow, attempts: readonly WebhookAttemptRow[]): WebhookDelivery {
  return {
    id: row.id,
    endpoint_id: row.endpoint_id,
    event_id: row.event_id,
    event_type: row.event_type,
    status: row.status as WebhookDelivery['status'],
    attempts: row.attempts,
    next_attempt_at: row.next_attempt_at?.toISOString() ?? null,
    last_attempt_at: row.last_attempt_at?.toISOString() ?? null,
    created_at: row.created_at.toISOString(),
    attempts_detail: attempts.map(toWebhookAttempt),
  }
}
