import { sql, type Kysely } from 'kysely'
import type pg from 'pg'
import { auditSystem } from '../audit.ts'
import type { DB } from '../db/schema.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import { toEvent } from '../mappers/events.ts'
import { toWebhookEndpoint } from '../mappers/webhooks.ts'
import type { EventRow } from '../repositories/events.ts'
import type { WebhookEndpointRow } from '../repositories/webhook-endpoints.ts'
import { postWebhook, type DeliveryOutcome } from '../webhooks/safe-request.ts'
import { openSecret, parseServerKey } from '../webhooks/secret-box.ts'
import type { WebhookSettings } from '../webhooks/settings.ts'
import { webhookHeaders } from '../webhooks/signature.ts'
import type { JobMetrics } from './job-metrics.ts'
import type { JobContext, TenantJob, TenantJobHandler } from './types.ts'
import { applyQuotaDefaults } from '../limits/limits.ts'

/** Read of the response: enough to see an error page's start, never a large body. */
const MAX_RESPONSE_BYTES = 64 * 1024
const EXCERPT_BYTES = 1024
/** Retries grow 4 times each, to at most 12 hours: with a 15 s base and 9 attempts, about a day in all. */
const BACKOFF_FACTOR = 4
const MAX_DELAY_MS = 12 * 3_600_000

/**
 * The delay after failed attempt `attempt` (1-based): base × 4^(attempt−1), capped, ±20% jitter so
 * that the retries of many deliveries failing together (an endpoint back from an outage) spread out.
 */
export function retryDelayMs (attempt: number, baseMs: number, random: () => number = Math.random): number {
  const nominal = Math.min(baseMs * BACKOFF_FACTOR ** (attempt - 1), MAX_DELAY_MS)
  return Math.round(nominal * (0.8 + 0.4 * random()))
}

/** The delivery with its endpoint and its event (null columns: the endpoint or the event is gone). */
interface PlanRow extends Pick<EventRow, 'type' | 'resource_type' | 'resource_id' | 'data' | 'request_id' |
  'actor_type' | 'actor_id' | 'created_at'> {
  status: string
  attempts: number
  due: boolean
  endpoint_id: string | null
  url: string
  endpoint_status: string | null
  secret_sealed: string
  previous_secret_sealed: string | null
  previous_secret_expires_at: Date | null
  failing_since: Date | null
  event_id: string | null
}

type SealedSecrets = Pick<WebhookEndpointRow, 'id' | 'secret_sealed' | 'previous_secret_sealed' |
  'previous_secret_expires_at'>

/** The secrets that sign now: the current one, and the previous one during its grace period. */
function signingSecrets (key: Buffer, tenantId: string, endpoint: SealedSecrets, now: Date): string[] {
  const context = `${tenantId}:${endpoint.id}`
  const secrets = [openSecret(key, endpoint.secret_sealed, context)]
  const expires = endpoint.previous_secret_expires_at
  if (endpoint.previous_secret_sealed !== null && expires !== null && new Date(expires) > now) {
    secrets.push(openSecret(key, endpoint.previous_secret_sealed, context))
  }
  return secrets
}

type Plan =
  | { kind: 'nothing', why: string }
  | {
    kind: 'send',
    url: string,
    body: string,
    headers: Record<string, string>,
    endpointId: string,
    attempts: number,
    /** The endpoint had failed before: a success clears that. */
    failing: boolean,
  }

/**
 * One attempt of one delivery: read what to send under the tenant's binding, send it outside any
 * transaction (a slow endpoint holds neither a connection nor the tenant's lock), then record the
 * attempt and what follows from it (success; a retry enqueued with its backoff; giving up; disabling
 * an endpoint that has failed for too long) in one transaction. A worker killed between sending and
 * recording sends again after its lease: at least once, with the same webhook-id (the event id) for
 * receivers to deduplicate on.
 */
export function deliverWebhookJob (settings: WebhookSettings, metrics?: JobMetrics): TenantJobHandler {
  const key = settings.secretKey === undefined ? undefined : parseServerKey(settings.secretKey)
  const attemptOnce = async (job: TenantJob, { pool, log, signal, quotaDefaults }: JobContext): Promise<void> => {
    if (key === undefined) {
      // Waits, re-enqueued, rather than burning the queue's retries: it goes out once the key is set.
      await withTenantTransaction(pool, job.tenantId, async (trx) => {
        await sql`SELECT enqueue_tenant_job('deliver_webhook', ${job.ref}::uuid, now() + interval '5 minutes')
                  FROM webhook_deliveries WHERE tenant_id = ${job.tenantId} AND id = ${job.ref}::uuid
                   AND status = 'pending'`.execute(trx.db)
      })
      log.error({ event: 'webhook_waiting' },
        'WEBHOOK_SECRET_KEY is not set: the delivery waits (retried in 5 minutes)')
      return
    }
    // One statement reads the delivery, its endpoint and its event, sent with BEGIN and the binding in
    // one write (holdWrites): a tenant that no longer exists, or a ref of another tenant, finds no row.
    const plan = await withTenantTransaction(pool, job.tenantId, async (trx): Promise<Plan> => {
      const { rows: [found] } = await sql<PlanRow>`
        SELECT d.status, d.attempts, d.next_attempt_at IS NULL OR d.next_attempt_at <= now() AS due,
               w.id AS endpoint_id, w.url, w.status AS endpoint_status, w.secret_sealed, w.previous_secret_sealed,
               w.previous_secret_expires_at, w.failing_since,
               e.id AS event_id, e.type, e.resource_type, e.resource_id, e.data, e.request_id, e.actor_type,
               e.actor_id, e.created_at
          FROM webhook_deliveries d
          LEFT JOIN webhook_endpoints w ON w.tenant_id = d.tenant_id AND w.id = d.endpoint_id
          LEFT JOIN events e ON e.tenant_id = d.tenant_id AND e.id = d.event_id AND e.shard = tenant_shard()
         WHERE d.tenant_id = ${job.tenantId}::uuid AND d.id = ${job.ref}::uuid`.execute(trx.db)
      if (found === undefined) return { kind: 'nothing', why: 'no such delivery in this tenant' }
      if (found.status !== 'pending') return { kind: 'nothing', why: `the delivery is already ${found.status}` }
      // A run whose attempt was recorded (its worker died before the queue heard of it): the retry
      // that attempt enqueued is the one to send, at its time (the database's clock: run_at = next_attempt_at).
      if (!found.due) return { kind: 'nothing', why: 'its next attempt is not due yet' }
      const cancel = found.endpoint_id === null || found.endpoint_status !== 'enabled'
        ? 'its endpoint is disabled'
        : found.event_id === null ? 'its event has expired' : undefined
      if (cancel !== undefined || found.endpoint_id === null || found.event_id === null) {
        await trx.db.updateTable('webhook_deliveries').set({ status: 'canceled', next_attempt_at: null })
          .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).execute()
        return { kind: 'nothing', why: `canceled: ${cancel ?? ''}` }
      }
      const now = new Date()
      const shown = toEvent({ ...found, tenant_id: job.tenantId, id: found.event_id, shard: 0 })
      const body = JSON.stringify({ type: shown.type, timestamp: shown.created_at, data: shown })
      const secrets = signingSecrets(key, job.tenantId, { ...found, id: found.endpoint_id }, now)
      const headers = webhookHeaders(secrets, found.event_id, Math.floor(now.getTime() / 1000), body)
      return {
        kind: 'send',
        url: found.url,
        body,
        headers,
        endpointId: found.endpoint_id,
        attempts: found.attempts,
        failing: found.failing_since !== null,
      }
    }, { holdWrites: true })
    if (plan.kind === 'nothing') {
      log.info({ event: 'webhook_skipped', why: plan.why }, 'webhook delivery: nothing to send')
      return
    }
    const outcome = await postWebhook(plan.url, plan.body, plan.headers, {
      allowPrivate: settings.allowPrivateTargets,
      connectTimeoutMs: settings.connectTimeoutMs,
      timeoutMs: settings.timeoutMs,
      maxResponseBytes: MAX_RESPONSE_BYTES,
      excerptBytes: EXCERPT_BYTES,
      signal,
    })
    // Stopping: nothing recorded, the queue runs the job again (the same webhook-id, again).
    if (signal.aborted) throw new Error('the worker stopped during the attempt')
    // What the tenant sees of a refusal: not where its host name resolved (that would map our network).
    if (outcome.refused) log.warn({ event: 'webhook_refused', detail: outcome.error }, 'webhook target refused')
    const recorded = await withTenantTransaction(pool, job.tenantId, async (trx) => {
      // A delivery that succeeds is metered at COMMIT (sql/0020), against the configured quotas too.
      await applyQuotaDefaults(trx.db, quotaDefaults)
      return recordAttempt(trx.db, job, plan,
        outcome.refused ? { ...outcome, error: 'refused: the target address is not public' } : outcome, settings)
    })
    if (recorded === undefined) return
    const fields = {
      event: 'webhook_attempt',
      endpoint: plan.endpointId,
      attempt: recorded.attempt,
      status: outcome.status,
      latency_ms: Math.round(outcome.latencyMs),
      error: outcome.error ?? undefined
    }
    metrics?.delivery(outcome.ok ? 'succeeded' : outcome.refused ? 'refused' : 'failed',
      outcome.refused ? null : outcome.latencyMs / 1000)
    if (recorded.next === 'gave_up') metrics?.delivery('gave_up', null)
    if (outcome.ok) log.info(fields, 'webhook delivered')
    else log.warn({ ...fields, next: recorded.next }, 'webhook attempt failed')
  }
  return async (job, context) => {
    try {
      await attemptOnce(job, context)
    } catch (error) {
      if (job.attempt < job.maxAttempts || context.signal.aborted) throw error
      context.log.error({ event: 'webhook_failed', err: error }, 'webhook delivery failed for good')
      await failForGood(context.pool, job, error)
    }
  }
}

interface Recorded {
  attempt: number
  /** What follows a failure: another attempt at that time, or none. */
  next: string | 'gave_up' | null
}

async function recordAttempt (
  db: Kysely<DB>, job: TenantJob, plan: { endpointId: string, attempts: number, failing: boolean },
  outcome: DeliveryOutcome, settings: WebhookSettings
): Promise<Recorded | undefined> {
  const { endpointId } = plan
  // The row lock orders two runs of the same job (one handed back while still sending): the second
  // finds the delivery settled, or pending with its attempt counted, and records after the first.
  const delivery = await db.selectFrom('webhook_deliveries').select(['attempts', 'status'])
    .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).forUpdate().executeTakeFirst()
  // Settled, or another run recorded an attempt since this one read the delivery: it was sent twice
  // (at least once), but only the first is recorded and only its retry scheduled.
  if (delivery === undefined || delivery.status !== 'pending' || delivery.attempts !== plan.attempts) return undefined
  const attempt = delivery.attempts + 1
  await db.insertInto('webhook_attempts').values({
    tenant_id: job.tenantId,
    delivery_id: job.ref,
    attempt,
    started_at: new Date(Date.now() - outcome.latencyMs),
    status_code: outcome.status,
    latency_ms: Math.round(outcome.latencyMs),
    error: outcome.error,
    response_excerpt: outcome.responseExcerpt,
  }).execute()
  const settle = (status: 'succeeded' | 'failed' | 'pending', nextAt: Date | null): Promise<unknown> =>
    db.updateTable('webhook_deliveries')
      .set({ status, attempts: attempt, last_attempt_at: sql<Date>`now()`, next_attempt_at: nextAt })
      .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).execute()
  if (outcome.ok) {
    await settle('succeeded', null)
    if (plan.failing) {
      await db.updateTable('webhook_endpoints').set({ failing_since: null })
        .where('tenant_id', '=', job.tenantId).where('id', '=', endpointId).execute()
    }
    return { attempt, next: null }
  }
  let next: string
  if (attempt >= settings.maxAttempts) {
    await settle('failed', null)
    next = 'gave_up'
  } else {
    const at = new Date(Date.now() + retryDelayMs(attempt, settings.retryBaseMs))
    await settle('pending', at)
    await sql`SELECT enqueue_tenant_job('deliver_webhook', ${job.ref}::uuid, ${at.toISOString()}::timestamptz)`
      .execute(db)
    next = at.toISOString()
  }
  await noteFailure(db, job, endpointId, settings)
  return { attempt, next }
}

/** Marks the endpoint failing since now (unless it already was), and disables it once that has lasted. */
async function noteFailure (
  db: Kysely<DB>, job: { tenantId: string, jobId: string }, endpointId: string, settings: WebhookSettings
): Promise<void> {
  const endpoint = await db.updateTable('webhook_endpoints')
    .set({ failing_since: sql<Date>`coalesce(failing_since, now())` })
    .where('tenant_id', '=', job.tenantId).where('id', '=', endpointId).where('status', '=', 'enabled')
    .returningAll().executeTakeFirst()
  if (endpoint?.failing_since == null) return
  const failingMs = Date.now() - new Date(endpoint.failing_since).getTime()
  if (failingMs < settings.disableAfterMs) return
  const reason = `every attempt failed for ${Math.round(failingMs / 60_000)} minutes`
  const disabled = await db.updateTable('webhook_endpoints')
    .set({ status: 'disabled', disabled_reason: reason, updated_at: sql<Date>`now()` })
    .where('tenant_id', '=', job.tenantId).where('id', '=', endpointId).returningAll().executeTakeFirstOrThrow()
  await auditSystem(db, job.jobId, 'webhook_endpoint.disabled', { type: 'webhook_endpoint', id: endpointId },
    { reason }, toWebhookEndpoint(disabled))
}

/**
 * A job that threw (the database unreachable, a secret that no longer opens) is retried by the queue;
 * on its last run the delivery is marked failed, so none stays pending with no job left to send it.
 */
async function failForGood (pool: pg.Pool, job: TenantJob, error: unknown): Promise<void> {
  await withTenantTransaction(pool, job.tenantId, async ({ db }) => {
    const delivery = await db.selectFrom('webhook_deliveries').select(['attempts', 'status'])
      .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).forUpdate().executeTakeFirst()
    if (delivery?.status !== 'pending') return
    await db.insertInto('webhook_attempts').values({
      tenant_id: job.tenantId,
      delivery_id: job.ref,
      attempt: delivery.attempts + 1,
      started_at: new Date(),
      status_code: null,
      latency_ms: 0,
      error: `not sent: rowfence could not prepare it (${error instanceof Error ? error.name : 'error'})`,
      response_excerpt: '',
    }).execute()
    await db.updateTable('webhook_deliveries')
      .set({ status: 'failed', attempts: delivery.attempts + 1, next_attempt_at: null, last_attempt_at: new Date() })
      .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).execute()
  })
}
