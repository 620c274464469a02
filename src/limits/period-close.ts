import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction } from '../db/tenant-transaction.ts'

/** How many past periods the sweep looks at: a deployment down for a whole month still closes it. */
const LOOK_BACK_MONTHS = 2

/**
 * Sends usage.period_closed (the period's totals) for every tenant with usage in a period that is
 * over and not closed yet, each in a transaction bound to that tenant, as the owner (`pool`). Run by
 * the maintenance sweep; any number of instances may run it at once (one notice per tenant and period,
 * sql/0020). Returns how many it sent.
 */
export async function closeUsagePeriods (pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ tenant_id: string, period: string }>(`
    SELECT DISTINCT u.tenant_id, to_char(u.period, 'YYYY-MM-DD') AS period
      FROM usage_periods u JOIN tenants t ON t.id = u.tenant_id AND t.status = 'active'
     WHERE u.period < usage_period() AND u.period >= usage_period() - make_interval(months => $1)
       AND NOT EXISTS (SELECT 1 FROM usage_notices n WHERE n.tenant_id = u.tenant_id AND n.period = u.period
                          AND n.notice = 'period_closed')
     ORDER BY 1, 2`, [LOOK_BACK_MONTHS])
  let sent = 0
  for (const { tenant_id: tenantId, period } of rows) {
    const closed = await withTenantTransaction(pool, tenantId, async ({ db }) => {
      const result = await sql<{ sent: boolean }>`SELECT usage_close_period(${tenantId}::uuid, ${period}::date) AS sent`
        .execute(db)
      return result.rows[0]?.sent === true
    })
    if (closed) sent++
  }
  return sent
}
