import type { FastifyBaseLogger } from 'fastify'
import type pg from 'pg'

/**
 * A job as the queue hands it over: only references. The tenant is bound from tenantId, in the job's
 * own transaction, as the runtime role; ref is a row of that tenant (a delivery, an export) read
 * under that binding, so a ref belonging to another tenant finds nothing.
 */
export interface TenantJob {
  tenantId: string
  ref: string
  /** The queue's job id, for logs. */
  jobId: string
  /** 1 on the first run; more when the job failed (threw) or its worker died and it runs again. */
  attempt: number
  /** The queue's limit (enqueue_tenant_job's max_attempts): a run at it that throws is the last one. */
  maxAttempts: number
}

export interface JobContext {
  /** Runtime-role pool (`app`): use withTenantTransaction(pool, job.tenantId, ...) for every read and write. */
  pool: pg.Pool
  /** Already carries tenant, job and ref ids. */
  log: FastifyBaseLogger
  /** Aborted when the worker is told to stop and the shutdown grace period has run out. */
  signal: AbortSignal
  /**
   * The configured default quotas (src/limits/limits.ts: quotaDefaultsSetting), for metered work: apply
   * them (applyQuotaDefaults) in a transaction that does any, or the database refuses it (sql/0021).
   */
  quotaDefaults: string
}

/** Returns when the job is done (or found nothing to do); throws to have the queue retry it later. */
export type TenantJobHandler = (job: TenantJob, context: JobContext) => Promise<void>
