import { sql, type Kysely } from 'kysely'
import type pg from 'pg'
import { auditOperator } from '../audit.ts'
import type { DB } from '../db/schema.ts'
import { withTenantTransaction } from '../db/tenant-transaction.ts'
import { lockTenant } from '../repositories/tenants.ts'
import type { AppendedAuditEvent } from '../repositories/audit-events.ts'
import { resolveLimits, type Limits, type PartialLimits } from './limits.ts'

/**
 * The operator's side of limits: plans (shared by every tenant on them) and each tenant's plan and
 * overrides. Every change notifies all instances (sql/0020), whose limits caches read them again on
 * the tenant's next request; quotas are read by the database itself in each write's transaction.
 */

export interface PlanRow {
  name: string
  limits: PartialLimits
  tenants: number
  created_at: string
  updated_at: string
}

/** Plans, by name, with how many tenants are on each. */
export async function listPlans (db: Kysely<DB>): Promise<PlanRow[]> {
  const { rows } = await sql<PlanRow>`
    SELECT p.name, p.limits, (SELECT count(*) FROM tenant_limits l WHERE l.plan = p.name)::int AS tenants,
           p.created_at, p.updated_at
      FROM plans p ORDER BY p.name`.execute(db)
  return rows
}

export async function findPlan (db: Kysely<DB>, name: string): Promise<PlanRow | undefined> {
  return (await listPlans(db)).find((p) => p.name === name)
}

/** Creates the plan or replaces its limits; `created` tells which. */
export async function putPlan (
  db: Kysely<DB>, name: string, limits: PartialLimits
): Promise<{ plan: PlanRow, created: boolean }> {
  const { rows } = await sql<{ created: boolean }>`
    INSERT INTO plans (name, limits) VALUES (${name}, ${JSON.stringify(limits)}::jsonb)
    ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_at = now()
    RETURNING (xmax = 0) AS created`.execute(db)
  const plan = await findPlan(db, name)
  return { plan: plan!, created: rows[0]!.created }
}

export type PlanDeletion = 'deleted' | 'missing' | 'in-use'

/** A plan some tenant is on stays: move those tenants first. */
export async function deletePlan (db: Kysely<DB>, name: string): Promise<PlanDeletion> {
  return db.transaction().execute(async (trx) => {
    const locked = await sql`SELECT 1 FROM plans WHERE name = ${name} FOR UPDATE`.execute(trx)
    if (locked.rows.length === 0) return 'missing'
    const used = await sql`SELECT 1 FROM tenant_limits WHERE plan = ${name} LIMIT 1`.execute(trx)
    if (used.rows.length > 0) return 'in-use'
    await sql`DELETE FROM plans WHERE name = ${name}`.execute(trx)
    return 'deleted'
  })
}

export interface TenantLimitsView {
  plan: string | null
  overrides: PartialLimits
  effective: Limits
  updated_at: string | null
}

async function readTenantLimits (db: Kysely<DB>, tenantId: string, defaults: Limits): Promise<TenantLimitsView> {
  type Row = { plan: string | null, overrides: PartialLimits, plan_limits: PartialLimits | null, updated_at: string }
  const { rows } = await sql<Row>`
    SELECT l.plan, l.overrides, p.limits AS plan_limits, l.updated_at
      FROM tenant_limits l LEFT JOIN plans p ON p.name = l.plan
     WHERE l.tenant_id = ${tenantId}`.execute(db)
  const row = rows[0]
  return {
    plan: row?.plan ?? null,
    overrides: row?.overrides ?? {},
    effective: resolveLimits(defaults, row?.plan_limits ?? null, row?.overrides ?? null),
    updated_at: row?.updated_at ?? null,
  }
}

/** A tenant's limits as the operator sees them; undefined for an unknown tenant. */
export async function getTenantLimits (
  pool: pg.Pool, tenantId: string, defaults: Limits
): Promise<TenantLimitsView | undefined> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    const found = await db.selectFrom('tenants').select('id').where('id', '=', tenantId).executeTakeFirst()
    if (found === undefined) return undefined
    return readTenantLimits(db, tenantId, defaults)
  }, { readOnly: true })
}

export class UnknownPlan extends Error {
  override name = 'UnknownPlan'
}

export type LimitsChange =
  | { outcome: 'no-tenant' }
  | { outcome: 'changed', limits: TenantLimitsView, appended: AppendedAuditEvent }

/**
 * Sets a tenant's plan (null: the defaults) and replaces its overrides, in a transaction bound to the
 * tenant, recorded in its audit trail as `limits.changed` by the operator.
 */
export async function setTenantLimits (
  pool: pg.Pool, tenantId: string, change: { plan: string | null, overrides: PartialLimits }, defaults: Limits,
  requestId: string
): Promise<LimitsChange> {
  return withTenantTransaction(pool, tenantId, async ({ db }) => {
    if (await lockTenant(db, tenantId) === undefined) return { outcome: 'no-tenant' }
    const before = await readTenantLimits(db, tenantId, defaults)
    // A new plan must exist; the tenant's own may not (imported from a deployment with other plans).
    if (change.plan !== null && change.plan !== before.plan) {
      const plan = await sql`SELECT 1 FROM plans WHERE name = ${change.plan} FOR SHARE`.execute(db)
      if (plan.rows.length === 0) throw new UnknownPlan(`no plan is named ${change.plan}`)
    }
    await sql`
      INSERT INTO tenant_limits (tenant_id, plan, overrides) VALUES (${tenantId}, ${change.plan},
        ${JSON.stringify(change.overrides)}::jsonb)
      ON CONFLICT (tenant_id) DO UPDATE SET plan = excluded.plan, overrides = excluded.overrides, updated_at = now()`
      .execute(db)
    const limits = await readTenantLimits(db, tenantId, defaults)
    const appended = await auditOperator(db, requestId, 'limits.changed', { type: 'tenant', id: tenantId }, {
      before: { plan: before.plan, overrides: before.overrides },
      after: { plan: limits.plan, overrides: limits.overrides },
    })
    return { outcome: 'changed', limits, appended }
  })
}
