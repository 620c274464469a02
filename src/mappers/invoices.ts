import { sql, type RawBuilder } from 'kysely'
import type { InvoiceRow } from '../repositories/invoices.ts'
import type { Invoice, InvoiceStatus } from '../schemas/invoices.ts'

const iso = (value: Date | null): string | null => value?.toISOString() ?? null

/** bigint columns arrive as strings (or JSON numbers from json_agg); the schema caps them at 2^53 − 1. */
export function toInvoice (row: InvoiceRow): Invoice {
  return {
    id: row.id,
    customer_id: row.customer_id,
    number: row.number,
    status: row.status as InvoiceStatus,
    currency: row.currency,
    lines: row.lines.map((l) => ({
      description: l.description,
      quantity: l.quantity,
      unit_amount_cents: Number(l.unit_amount_cents),
      amount_cents: Number(l.amount_cents),
    })),
    amount_cents: Number(row.amount_cents),
    due_date: row.due_date,
    memo: row.memo,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
    finalized_at: iso(row.finalized_at),
    paid_at: iso(row.paid_at),
    voided_at: iso(row.voided_at),
  }
}

export function formatInvoiceNumber (n: number): string {
  return `INV-${String(n).padStart(6, '0')}`
}

/** A timestamptz as toISOString() writes it: UTC, milliseconds (truncated), a Z. */
const isoSql = (column: RawBuilder<unknown>): RawBuilder<unknown> =>
  sql`to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`

/**
 * The same mapping as toInvoice, written for PostgreSQL: how the database renders each field of an
 * invoice row (`ref`: the row's name in the query) as the API object, for routes that let the
 * database build the JSON of a whole page (GET /v1/invoices). Its type has exactly Invoice's keys,
 * so a field added to or removed from the schema does not compile until it is mapped here too; a
 * test checks that both mappings give identical JSON.
 */
export const INVOICE_SQL_FIELDS: { [K in keyof Invoice]-?: (ref: string) => RawBuilder<unknown> } = {
  id: (r) => sql.ref(`${r}.id`),
  customer_id: (r) => sql.ref(`${r}.customer_id`),
  number: (r) => sql.ref(`${r}.number`),
  status: (r) => sql.ref(`${r}.status`),
  currency: (r) => sql.ref(`${r}.currency`),
  // bigint is a JSON number in row_to_json, as Number() makes it in toInvoice.
  lines: (r) => sql.ref(`${r}.lines`),
  amount_cents: (r) => sql.ref(`${r}.amount_cents`),
  due_date: (r) => sql.ref(`${r}.due_date`),
  memo: (r) => sql.ref(`${r}.memo`),
  created_at: (r) => isoSql(sql.ref(`${r}.created_at`)),
  updated_at: (r) => isoSql(sql.ref(`${r}.updated_at`)),
  finalized_at: (r) => isoSql(sql.ref(`${r}.finalized_at`)),
  paid_at: (r) => isoSql(sql.ref(`${r}.paid_at`)),
  voided_at: (r) => isoSql(sql.ref(`${r}.voided_at`)),
}

/**
 * The JSON of an invoice row, from INVOICE_SQL_FIELDS, in the schema's field order. row_to_json, not
 * json_build_object: the latter writes `{"id" : ..., "status" : ...}`, and list items must be byte for
 * byte what the serializer writes for a single invoice (`{"id":...,"status":...}`).
 */
export function invoiceJsonSql (ref: string): RawBuilder<unknown> {
  const columns = Object.entries(INVOICE_SQL_FIELDS).map(([key, field]) => sql`${field(ref)} AS ${sql.id(key)}`)
  return sql`(SELECT row_to_json(invoice) FROM (SELECT ${sql.join(columns)}) invoice)`
}
