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
