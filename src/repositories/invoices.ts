import { sql, type Insertable, type Kysely, type RawBuilder, type Selectable, type Updateable } from 'kysely'
import { jsonArrayFrom } from 'kysely/helpers/postgres'
import type { DB, Invoices } from '../db/schema.ts'
import { queryTemplate } from '../db/query-templates.ts'
import { invoiceJsonSql } from '../mappers/invoices.ts'
import type { PricedLine } from '../money.ts'

type Executor = Kysely<DB>

export interface LineRow {
  description: string
  quantity: number
  unit_amount_cents: number | string
  amount_cents: number | string
}

/** Every column of invoices but the lines (the compiler checks that none is missing). */
export const INVOICE_COLUMNS = [
  'id', 'tenant_id', 'shard', 'customer_id', 'number', 'status', 'currency', 'amount_cents', 'due_date', 'memo',
  'created_at', 'updated_at', 'finalized_at', 'paid_at', 'voided_at',
] as const satisfies ReadonlyArray<Exclude<keyof Invoices, 'lines'>>
/** Compiles only while INVOICE_COLUMNS names every column but the lines (else: `{ missing: ... }`). */
type MissingColumns = Exclude<keyof Invoices, 'lines' | typeof INVOICE_COLUMNS[number]>
export const INVOICE_COLUMNS_COMPLETE: [MissingColumns] extends [never] ? true : { missing: MissingColumns } = true

/** What a caller may write of an invoice: never the lines copy, which only the database writes (sql/0014). */
type InvoiceInsert = Omit<Insertable<Invoices>, 'tenant_id' | 'lines'>

/** An invoice row: its lines come from invoices.lines, which the database keeps from invoice_lines (sql/0014). */
export type InvoiceRow = Omit<Selectable<Invoices>, 'lines'> & { lines: LineRow[] }

/** The invoice_lines rows of an invoice's priced lines (tenant_id and shard: the defaults). */
function lineRows (invoiceId: string, lines: PricedLine[]) {
  return lines.map((l) => ({
    invoice_id: invoiceId,
    position: l.position,
    description: l.description,
    quantity: l.quantity,
    unit_amount_cents: l.unit_amount_cents,
    amount_cents: l.amount_cents,
  }))
}

/**
 * Inserts an invoice with its lines and returns it as findInvoice would: one statement (two
 * data-modifying CTEs), so one round trip, and all or nothing. The lines' foreign key to the
 * invoice is checked at the end of the statement, when both rows exist.
 */
export async function insertInvoice (trx: Executor, invoice: InvoiceInsert, lines: PricedLine[]): Promise<InvoiceRow> {
  return trx
    // Not `lines`: the trigger that fills it runs at the end of the statement; the lines are read
    // back from the lines CTE instead.
    .with('inserted', (db) => db.insertInto('invoices').values(invoice).returning(INVOICE_COLUMNS))
    .with('inserted_lines', (db) => db.insertInto('invoice_lines').values(lineRows(invoice.id, lines))
      .returning(['position', 'description', 'quantity', 'unit_amount_cents', 'amount_cents']))
    .selectFrom('inserted')
    .selectAll('inserted')
    .select((eb) => jsonArrayFrom(
      eb.selectFrom('inserted_lines').select(['description', 'quantity', 'unit_amount_cents', 'amount_cents'])
        .orderBy('position')
    ).as('lines'))
    .executeTakeFirstOrThrow() as Promise<InvoiceRow>
}

// Placeholders of the query templates (see src/db/query-templates.ts): values no argument takes.
const ID = 'ffffffff-ffff-7fff-bfff-fffffffff001'
const BEFORE = 'ffffffff-ffff-7fff-bfff-fffffffff002'
const CUSTOMER = 'ffffffff-ffff-7fff-bfff-fffffffff003'
const STATUS = '\u0000status'
const LIMIT = 987_654_321

const findInvoiceQuery = queryTemplate(
  (trx, id: string) => trx.selectFrom('invoices').selectAll('invoices').where('invoices.id', '=', id),
  [ID]
)

export async function findInvoice (trx: Executor, id: string): Promise<InvoiceRow | undefined> {
  // The column is typed Json; the trigger of sql/0014 writes it only as an array of LineRow.
  return (await findInvoiceQuery(trx, id))[0] as InvoiceRow | undefined
}

/** A page of invoices as the database rendered it: the JSON text of its items, and where it ends. */
export interface InvoicePageJson {
  /** A JSON array of API invoices (text, never parsed here). */
  data: string
  /** Whether rows remain after this page, and the last id of the page (the next cursor). */
  more: boolean
  lastId: string | null
}

const LIMIT_1 = 987_654_322

/**
 * How many rows a page reads: at least limit + 1 (to know whether another page follows), rounded up
 * to one of a few sizes. The size is written into the statement (see queryTemplate's `inline`), so
 * each size is its own statement text per shape and shard; five sizes instead of 200 keep the named
 * statements and their cached plans few. The rows past the limit are read but not rendered.
 */
const FETCH_SIZES = [11, 26, 51, 101, 201] as const
export function fetchSize (limit: number): number {
  const size = FETCH_SIZES.find((s) => s > limit)
  if (size === undefined) throw new RangeError(`page limit ${limit} above ${FETCH_SIZES.at(-1)! - 1}`)
  return size
}

const listInvoicePageQuery = queryTemplate(
  (
    trx,
    limit: number,
    fetch: number,
    before: string | undefined,
    status: string | undefined,
    customerId: string | undefined
  ) => {
    // Each row's JSON is rendered by the database, only for the first `limit` rows (the rest are
    // read to know whether another page follows); the server joins them into the array. No
    // aggregate: an ordered json_agg re-sorted the page in PostgreSQL 15 (pgbench of the route's
    // transaction: about 20 % more per second without it).
    const rowNumber = sql`row_number() OVER (ORDER BY invoices.id DESC)`
    let page = trx.selectFrom('invoices').select([
      'invoices.id',
      sql<string | null>`CASE WHEN ${rowNumber} <= ${limit} THEN ${invoiceJsonSql('invoices')}::text END`.as('json'),
    ]).orderBy('invoices.id', 'desc').limit(sql.lit(fetch)) // inline: see queryTemplate
    if (before !== undefined) page = page.where('invoices.id', '<', before)
    if (status !== undefined) page = page.where('invoices.status', '=', status)
    if (customerId !== undefined) page = page.where('invoices.customer_id', '=', customerId)
    return page
  },
  [LIMIT, LIMIT_1, BEFORE, STATUS, CUSTOMER],
  (_limit, _fetch, before, status, customerId) =>
    `${before === undefined ? '' : 'b'}${status === undefined ? '' : 's'}${customerId === undefined ? '' : 'c'}`,
  [1]
)

/**
 * A page of invoices, newest first, rendered as JSON by the database (INVOICE_SQL_FIELDS): the server
 * sends the text on without parsing, mapping and serialising each row and its lines again. One
 * query: more than limit rows are read (fetchSize), so whether another page follows is known.
 */
export async function listInvoicePage (
  trx: Executor,
  page: { limit: number, before?: string | undefined, status?: string | undefined, customerId?: string | undefined }
): Promise<InvoicePageJson> {
  const rows = await listInvoicePageQuery(
    trx, page.limit, fetchSize(page.limit), page.before, page.status, page.customerId)
  const shown = rows.slice(0, page.limit)
  const more = rows.length > page.limit
  return { data: `[${shown.map((r) => r.json!).join(',')}]`, more, lastId: more ? shown.at(-1)!.id : null }
}

/** Locks the invoice row for a state change and returns its status (undefined: no such invoice here). */
export async function lockInvoiceStatus (trx: Executor, id: string): Promise<string | undefined> {
  const row = await trx.selectFrom('invoices').select('status').where('id', '=', id).forUpdate().executeTakeFirst()
  return row?.status
}

type InvoiceChanges = Omit<
  Updateable<Invoices>,
  'tenant_id' | 'id' | 'lines' | 'created_at' | 'updated_at' | 'finalized_at' | 'paid_at' | 'voided_at'
>

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
    await trx.insertInto('invoice_lines').values(lineRows(id, lines)).execute()
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

/**
 * The invoice as the API shows it (toInvoice's mapping, INVOICE_SQL_FIELDS), rendered by the database:
 * for an event recorded in the same pipeline as the statement that writes the invoice, whose row the
 * server does not have yet. Raw SQL, so the tenant and shard predicates are written here.
 */
export function invoiceStateSql (scope: { tenantId: string, shard: number }, id: string): RawBuilder<unknown> {
  return sql`SELECT ${invoiceJsonSql('i')} FROM invoices i
              WHERE i.tenant_id = ${scope.tenantId} AND i.shard = ${scope.shard} AND i.id = ${id}`
}
