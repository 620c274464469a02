import type pg from 'pg'
import QueryStream from 'pg-query-stream'
import { signExport } from './export-signature.ts'
import { bindOwner, exportedTables, ident, type TenantTableInfo } from './tenant-tables.ts'

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
 * same bytes. `onPlan` receives the row counts (same snapshot) before the first line. Everything but
 * the tenant's own exports (EPHEMERAL_TABLES), secrets included: webhook secrets travel sealed, and open
 * only where WEBHOOK_SECRET_KEY is the same.
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
    const tables = await exportedTables(client, 'operator')
    if (onPlan !== undefined) onPlan(await countRows(client, tables, tenantId))
    for (const t of tables) {
      const prefix = linePrefix(t.name)
      const { text, values } = rowsQuery(t, tenantId)
      const stream = client.query(new QueryStream(text, values, { batchSize: 500 }))
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

/*
 * What both exports share — the operator's above, in one snapshot as the owner, and the tenant's own
 * (src/jobs/tenant-export-job.ts), in short transactions as the runtime role: the tables and columns
 * (exportedTables), their order, the row counts of the plan and the lines, `{"table": ..., "row": {...}}`
 * with the row as PostgreSQL's row_to_json renders it (the caller sets TimeZone to UTC).
 */

/** The start of a row's line: the line is `${linePrefix(table)}${rowJson}}\n`. */
export const linePrefix = (table: string): string => `{"table":${JSON.stringify(table)},"row":`

/** Row counts per table, in export order, as the caller's transaction sees them. */
export async function countRows (
  client: pg.ClientBase, tables: TenantTableInfo[], tenantId: string
): Promise<ExportPlan> {
  const counts: ExportPlan['tables'] = []
  for (const t of tables) {
    const { rows: [r] } = await client.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1`, [tenantId])
    counts.push({ name: t.name, rows: Number(r!.n) })
  }
  return { tables: counts, total: counts.reduce((s, c) => s + c.rows, 0) }
}

/** A bounded page of a table's rows: at most `limit`, after the row whose key is `after`. */
export interface RowPage {
  limit: number
  /** The key (`k`) of the last row of the page before, or undefined for the first page. */
  after: string[] | undefined
  /** The tenant's shard: a sharded table is then read from that partition only. */
  shard: number | undefined
}

/**
 * One table's rows as JSON text (`j`), in export order; `$1` is the tenant. With a page, at most
 * page.limit of them after page.after (keyset pagination on the export order, which is a unique key),
 * each with its key as text (`k`) to continue from.
 */
export function rowsQuery (
  t: TenantTableInfo, tenantId: string, page?: RowPage
): { text: string, values: unknown[] } {
  const order = t.orderBy.map(ident)
  const values: unknown[] = [tenantId]
  const where = [`${ident(t.keyColumn)} = $1`]
  let key = ''
  let limit = ''
  if (page !== undefined) {
    if (!t.orderBy.every((c) => t.columns.includes(c))) throw new Error(`${t.name}: its key columns are not exported`)
    if (t.sharded && page.shard !== undefined) {
      values.push(page.shard)
      where.push(`shard = $${values.length}`)
    }
    if (page.after !== undefined) {
      const params = page.after.map((v) => `$${values.push(v)}`)
      where.push(`(${order.join(', ')}) > (${params.join(', ')})`)
    }
    key = `, ARRAY[${order.map((c) => `r.${c}::text`).join(', ')}] AS k`
    limit = ` LIMIT $${values.push(page.limit)}`
  }
  const text = `SELECT row_to_json(r)::text AS j${key} FROM (SELECT ${t.columns.map(ident).join(', ')}
                 FROM ${ident(t.name)} WHERE ${where.join(' AND ')} ORDER BY ${order.join(', ')}${limit}) r`
  return { text, values }
}
