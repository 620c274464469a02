import { sql, type Insertable, type Kysely, type Selectable, type Updateable } from 'kysely'
import type { DB, WebhookAttempts, WebhookDeliveries, WebhookEndpoints } from '../db/schema.ts'

type Executor = Kysely<DB>
export type WebhookEndpointRow = Selectable<WebhookEndpoints>
export type WebhookDeliveryRow = Selectable<WebhookDeliveries>
export type WebhookAttemptRow = Selectable<WebhookAttempts>

// tenant_id is never passed in: the columns default to current_tenant_id() and the policies' WITH
// CHECK refuse any other value (see src/repositories/customers.ts).

export async function insertWebhookEndpoint (
  trx: Executor,
  endpoint: Omit<Insertable<WebhookEndpoints>, 'tenant_id'>
): Promise<WebhookEndpointRow> {
  return trx.insertInto('webhook_endpoints').values(endpoint).returningAll().executeTakeFirstOrThrow()
}

export async function findWebhookEndpoint (trx: Executor, id: string): Promise<WebhookEndpointRow | undefined> {
  return trx.selectFrom('webhook_endpoints').selectAll().where('id', '=', id).executeTakeFirst()
}

export async function listWebhookEndpoints (
  trx: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<WebhookEndpointRow[]> {
  let query = trx.selectFrom('webhook_endpoints').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

export type WebhookEndpointChanges = Pick<Updateable<WebhookEndpoints>,
  'url' | 'description' | 'event_types' | 'status' | 'disabled_reason' | 'failing_since'>

export async function updateWebhookEndpoint (
  trx: Executor,
  id: string,
  changes: WebhookEndpointChanges
): Promise<WebhookEndpointRow | undefined> {
  return trx
    .updateTable('webhook_endpoints')
    .set({ ...changes, updated_at: sql<Date>`now()` })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst()
}

/**
 * The new secret replaces the current one, which keeps signing (as previous_secret_sealed) for graceMs
 * more. One statement: two rotations at once each keep the secret they replaced, never a lost one.
 */
export async function rotateWebhookSecret (
  trx: Executor,
  id: string,
  sealed: string,
  graceMs: number
): Promise<WebhookEndpointRow | undefined> {
  return trx
    .updateTable('webhook_endpoints')
    .set((eb) => ({
      previous_secret_sealed: eb.ref('secret_sealed'),
      previous_secret_expires_at: sql<Date>`now() + ${graceMs} * interval '1 millisecond'`,
      secret_sealed: sealed,
      updated_at: sql<Date>`now()`,
    }))
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst()
}

export async function deleteWebhookEndpoint (trx: Executor, id: string): Promise<boolean> {
  const result = await trx.deleteFrom('webhook_endpoints').where('id', '=', id).executeTakeFirst()
  return result.numDeletedRows > 0n
}

/** Enabled endpoints subscribed to an event type (the same test as the fan-out trigger's). */
export async function subscribedEndpoints (trx: Executor, eventType: string): Promise<WebhookEndpointRow[]> {
  return trx.selectFrom('webhook_endpoints').selectAll()
    .where('status', '=', 'enabled')
    .where(sql<boolean>`event_type_matches(event_types, ${eventType})`)
    .orderBy('id')
    .execute()
}

/**
 * An endpoint's deliveries, newest first. Ids made by the fan-out trigger are random (v4), so pages
 * follow (created_at, id); the cursor is the last id, whose created_at is looked up.
 */
export async function listDeliveries (
  trx: Executor,
  page: { endpointId: string, limit: number, before?: string | undefined, status?: string | undefined }
): Promise<WebhookDeliveryRow[]> {
  let query = trx.selectFrom('webhook_deliveries').selectAll()
    .where('endpoint_id', '=', page.endpointId)
    .orderBy('created_at', 'desc').orderBy('id', 'desc')
    .limit(page.limit)
  if (page.status !== undefined) query = query.where('status', '=', page.status)
  const before = page.before
  if (before !== undefined) {
    query = query.where((eb) => eb(
      eb.refTuple('created_at', 'id'), '<',
      eb.selectFrom('webhook_deliveries as cursor')
        .select(['cursor.created_at', 'cursor.id'])
        .where('cursor.id', '=', before)
        .where('cursor.endpoint_id', '=', page.endpointId)
        .$asTuple('created_at', 'id')
    ))
  }
  return query.execute()
}

/** The attempts of some deliveries, in order. */
export async function listAttempts (trx: Executor, deliveryIds: string[]): Promise<WebhookAttemptRow[]> {
  if (deliveryIds.length === 0) return []
  return trx.selectFrom('webhook_attempts').selectAll()
    .where('delivery_id', 'in', deliveryIds)
    .orderBy('delivery_id').orderBy('attempt')
    .execute()
}

export async function insertDelivery (
  trx: Executor,
  delivery: Pick<Insertable<WebhookDeliveries>, 'id' | 'endpoint_id' | 'event_id' | 'event_type'>
): Promise<WebhookDeliveryRow> {
  return trx.insertInto('webhook_deliveries').values(delivery).returningAll().executeTakeFirstOrThrow()
}

/** Queues the delivery job, in the caller's transaction: the delivery and its job commit together. */
export async function enqueueDelivery (trx: Executor, deliveryId: string): Promise<void> {
  await sql`SELECT enqueue_tenant_job('deliver_webhook', ${deliveryId}::uuid)`.execute(trx)
}
