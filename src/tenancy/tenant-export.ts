import type pg from 'pg'
import QueryStream from 'pg-query-stream'
import { signExport } from './export-signature.ts'
import { bindOwner, ident, tenantTablesInOrder } from './tenant-tables.ts'

export class TenantNotFound extends Error {
  override name = 'TenantNotFound'
}

export interface ExportPlan {
  tables: Array<{ name: string, rows: number }>
  total: number
}

/**
 * Streams every row the tenant owns as NDJSON lines `{"table": ..., "row": {...}}`, from one
 * REPEATABLE READ snapshot, through a server-side cursor (memory stays flat whatever the size), and
 * ends with the signature trailer (src/tenancy/export-signature.ts) made with `signingKey`.
 * Times are rendered in UTC and rows in a fixed order, so exporting the same data twice gives the
 * same bytes. `onPlan` receives the row counts (same snapshot) before the first line.
 */
export function exportTenant (
  pool: pg.Pool, tenantId: string, signingKey: string, onPlan?: (plan: ExportPlan) => void
): AsyncGenerator<string> {
  return signExport(exportRows(pool, tenantId, onPlan), signingKey)
}

async function * exportRows (
  pool: pg.Pool, tenantId: string, onPlan?: (plan: ExportPlan) => void
): AsyncGenerator<string> {
  const client = await pool.connect()
  let committed = false
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    await bindOwner(client, tenantId)
    await client.query("SET LOCAL TimeZone = 'UTC'")
    const found = await client.query('SELECT 1 FROM tenants WHERE id = $1', [tenantId])
    if (found.rowCount === 0) throw new TenantNotFound(`tenant ${tenantId} not found`)
    const tables = await tenantTablesInOrder(client)
    if (onPlan !== undefined) {
      const counts: ExportPlan['tables'] = []
      for (const t of tables) {
        const { rows: [r] } = await client.query<{ n: string }>(
          `SELECT count(*) AS n FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1`, [tenantId])
        counts.push({ name: t.name, rows: Number(r!.n) })
      }
      onPlan({ tables: counts, total: counts.reduce((s, c) => s + c.rows, 0) })
    }
    for (const t of tables) {
      const prefix = `{"table":${JSON.stringify(t.name)},"row":`
      const columns = t.columns.map(ident).join(', ')
      const text = `SELECT row_to_json(r)::text AS j FROM (SELECT ${columns} FROM ${ident(t.name)}
                     WHERE ${ident(t.keyColumn)} = $1 ORDER BY ${t.orderBy.map(ident).join(', ')}) r`
      const stream = client.query(new QueryStream(text, [tenantId], { batchSize: 500 }))
      for await (const row of stream as AsyncIterable<{ j: string }>) yield `${prefix}${row.j}}\n`
    }
    await client.query('COMMIT')
    committed = true
  } finally {
    // On an error, or a consumer that stopped reading (a client gone mid-download), the connection
    // may still have a cursor open: destroy it rather than return it to the pool mid-transaction.
    client.release(committed ? undefined : true)
  }
}
