import { sql, type ExpressionBuilder, type Insertable, type Kysely, type Selectable, type Updateable } from 'kysely'
import { jsonArrayFrom } from 'kysely/helpers/postgres'
import type { DB, Invoices } from '../db/schema.ts'
import type { PricedLine } from '../money.ts'

type Executor = Kysely<DB>

export interface LineRow {
  description: string
  quantity: number
  unit_amount_cents: number | string
  amount_cents: number | string
}

export type InvoiceRow = Selectable<Invoices> & { lines: LineRow[] }

/** The invoice's lines, in order, as a JSON array inside the same query (one round trip). */
function linesOf (eb: ExpressionBuilder<DB, 'invoices'>) {
  return jsonArrayFrom(
    eb.selectFrom('invoice_lines as l')
      .select(['l.description', 'l.quantity', 'l.unit_amount_cents', 'l.amount_cents'])
      .whereRef('l.tenant_id', '=', 'invoices.tenant_id')
      .whereRef('l.invoice_id', '=', 'invoices.id')
      .orderBy('l.position')
  ).as('lines')
}

async function insertLines (trx: Executor, invoiceId: string, lines: PricedLine[]): Promise<void> {
  await trx.insertInto('invoice_lines').values(lines.map((l) => ({
    invoice_id: invoiceId,
    position: l.position,
    description: l.description,
    quantity: l.quantity,
    unit_amount_cents: l.unit_amount_cents,
    amount_cents: l.amount_cents,
  }))).execute()
}

export async function insertInvoice (trx: Executor, invoice: Omit<Insertable<Invoices>, 'tenant_id'>, lines: PricedLine[]): Promise<InvoiceRow> {
  await trx.insertInto('invoices').values(invoice).execute()
  await insertLines(trx, invoice.id, lines)
  return (await findInvoice(trx, invoice.id))!
}

export async function findInvoice (trx: Executor, id: string): Promise<InvoiceRow | undefined> {
  return trx.selectFrom('invoices').selectAll('invoices').select(linesOf).where('invoices.id', '=', id).executeTakeFirst()
}

export async function listInvoices (
  trx: Executor,
  page: { limit: number, before?: string | undefined, status?: string | undefined, customerId?: string | undefined }
): Promise<InvoiceRow[]> {
  let query = trx.selectFrom('invoices').selectAll('invoices').select(linesOf).orderBy('invoices.id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('invoices.id', '<', page.before)
  if (page.status !== undefined) query = query.where('invoices.status', '=', page.status)
  if (page.customerId !== undefined) query = query.where('invoices.customer_id', '=', page.customerId)
  return query.execute()
}

/** Locks the invoice row for a state change and returns its status (undefined: no such invoice here). */
export async function lockInvoiceStatus (trx: Executor, id: string): Promise<string | undefined> {
  const row = await trx.selectFrom('invoices').select('status').where('id', '=', id).forUpdate().executeTakeFirst()
  return row?.status
}

type InvoiceChanges = Omit<Updateable<Invoices>, 'tenant_id' | 'id' | 'created_at' | 'updated_at' | 'finalized_at' | 'paid_at' | 'voided_at'>

/** Applies changes (and replaces the lines, when given); `stamp` records the transition time. */
export async function updateInvoice (
  trx: Executor,
  id: string,
  changes: InvoiceChanges,
  options: { lines?: PricedLine[] | undefined, stamp?: 'finalized_at' | 'paid_at' | 'voided_at' } = {}
): Promise<InvoiceRow> {
  const now = sql<Date>`now()`
  await trx.updateTable('invoices')
    .set({ ...changes, updated_at: now, ...(options.stamp !== undefined && { [options.stamp]: now }) })
    .where('id', '=', id)
    .execute()
  const lines = options.lines
  if (lines !== undefined) {
    await trx.deleteFrom('invoice_lines').where('invoice_id', '=', id).execute()
    await insertLines(trx, id, lines)
  }
  return (await findInvoice(trx, id))!
}

/** The tenant's next invoice number: its counter row, incremented (and locked) in this transaction. */
export async function nextInvoiceNumber (trx: Executor): Promise<number> {
  const row = await trx.insertInto('invoice_counters')
    .values({ last_number: 1 })
    .onConflict((oc) => oc.column('tenant_id').doUpdateSet({ last_number: sql`invoice_counters.last_number + 1` }))
    .returning('last_number')
    .executeTakeFirstOrThrow()
  return Number(row.last_number)
}
