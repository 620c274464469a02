import { sql, type Kysely, type Selectable } from 'kysely'
import type { DB, TenantExports } from '../db/schema.ts'

type Executor = Kysely<DB>

/** An export as stored, and whether its expires_at has passed (by the database's clock). */
export type TenantExportRow = Selectable<TenantExports> & { expired: boolean }

/** Salt of the per-tenant lock that serialises export requests (src/tenancy/operation-lock.ts has the others). */
export const EXPORT_REQUEST_LOCK_SALT = 7303

const expired = sql<boolean>`coalesce(expires_at <= now(), false)`.as('expired')

/**
 * A new export, queued. expires_at starts as created_at + ttl: the job keeps that ttl and sets
 * expires_at = finished_at + ttl when the export is ready (it has no other way to know it), and an
 * export that never finishes is given up at that time (the sweep deletes it; it no longer blocks a new one).
 */
export async function insertTenantExport (
  trx: Executor, values: { id: string, actorType: string, actorId: string, ttlMs: number }
): Promise<TenantExportRow> {
  const row = await trx.insertInto('tenant_exports').values({
    id: values.id,
    actor_type: values.actorType,
    actor_id: values.actorId,
    expires_at: sql<Date>`now() + make_interval(secs => ${values.ttlMs / 1000})`,
  }).returningAll().executeTakeFirstOrThrow()
  return { ...row, expired: false }
}

/**
 * Waits until no other transaction is requesting an export for the tenant: with it held, the check for
 * an unfinished export and the insert that follows it cannot interleave with another request's.
 */
export async function lockExportRequests (trx: Executor, tenantId: string): Promise<void> {
  await sql`SELECT pg_advisory_xact_lock(hashtextextended(${tenantId}::text, ${EXPORT_REQUEST_LOCK_SALT}))`
    .execute(trx)
}

/** The tenant's queued or running export, unless given up (past expires_at). */
export async function findUnfinishedExport (
  trx: Executor
): Promise<Pick<TenantExportRow, 'id' | 'status'> | undefined> {
  return trx.selectFrom('tenant_exports').select(['id', 'status'])
    .where('status', 'in', ['queued', 'running'])
    .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', sql<Date>`now()`)]))
    .orderBy('id').limit(1).executeTakeFirst()
}

/** Queues the export's job for the bound tenant, in the caller's transaction (sql/0019). */
export async function enqueueExportJob (trx: Executor, id: string): Promise<void> {
  await sql`SELECT enqueue_tenant_job('tenant_export', ${id}::uuid)`.execute(trx)
}

export async function findTenantExport (trx: Executor, id: string): Promise<TenantExportRow | undefined> {
  return trx.selectFrom('tenant_exports').selectAll().select(expired).where('id', '=', id).executeTakeFirst()
}

export async function listTenantExports (
  trx: Executor, page: { limit: number, before?: string | undefined }
): Promise<TenantExportRow[]> {
  let query = trx.selectFrom('tenant_exports').selectAll().select(expired).orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}
