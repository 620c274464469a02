// The SQL the server sends per request, for pgbench (scripts/bench.ts): captured from the very
// repository functions the routes call, so that pgbench runs exactly that SQL, and the textbook
// transaction of the naive reference.
import {
  type ExpressionBuilder, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler,
  type CompiledQuery, type DatabaseConnection, type Driver, type QueryResult,
} from 'kysely'
import { jsonArrayFrom } from 'kysely/helpers/postgres'
import type { DB } from '../../src/db/schema.ts'
import { BIND_WITH_TIMEOUTS_SQL } from '../../src/db/tenant-transaction.ts'
import { TenantScopePlugin, type TenantTables } from '../../src/db/tenant-scope.ts'
import { priceLines } from '../../src/money.ts'
import { insertAuditEvent } from '../../src/repositories/audit-events.ts'
import { findInvoice, insertInvoice, INVOICE_COLUMNS, listInvoicePage } from '../../src/repositories/invoices.ts'
import { LINE, type Scenario } from './bench-data.ts'

// The textbook queries of the naive reference: an invoice's columns (all but the copy of its lines)
// and its lines aggregated from invoice_lines in a correlated subquery. The server reads the lines
// the database keeps on the invoice instead (invoices.lines, sql/0014); the reference is what a
// server without that does.
function textbookLines (eb: ExpressionBuilder<DB, 'invoices'>) {
  return jsonArrayFrom(
    eb.selectFrom('invoice_lines as l')
      .select(['l.description', 'l.quantity', 'l.unit_amount_cents', 'l.amount_cents'])
      .whereRef('l.tenant_id', '=', 'invoices.tenant_id')
      .whereRef('l.invoice_id', '=', 'invoices.id')
      .orderBy('l.position')
  ).as('lines')
}

async function textbookFind (db: Kysely<DB>, id: string): Promise<void> {
  await db.selectFrom('invoices').select(INVOICE_COLUMNS.map((c) => `invoices.${c}` as const)).select(textbookLines)
    .where('invoices.id', '=', id).execute()
}

async function textbookList (db: Kysely<DB>, limit: number): Promise<void> {
  await db.selectFrom('invoices').select(INVOICE_COLUMNS.map((c) => `invoices.${c}` as const)).select(textbookLines)
    .orderBy('invoices.id', 'desc').limit(limit).execute()
}

// The ids of scripts/lib/bench-data.ts in SQL, for pgbench (which has only numeric variables).
// pgbench passes :t and :j as parameters of unknown type in extended mode, hence the casts.
const sqlTenant = (t: string): string => `(lpad(to_hex(CAST(${t} AS int)), 8, '0') || '-0000-7000-8000-000000000000')`
const sqlUuid = (t: string, tail: string): string =>
  `((lpad(to_hex(CAST(${t} AS int)), 8, '0') || '-0000-7000-${tail}'))::uuid`

/** A Kysely that records the statements it is asked to run and answers them with no rows. */
class CaptureDriver implements Driver {
  readonly queries: CompiledQuery[] = []
  async init (): Promise<void> {}
  async acquireConnection (): Promise<DatabaseConnection> {
    return {
      // An INSERT ... RETURNING (the audit event's seq and hash) gets a row of the returned columns.
      executeQuery: async <R>(query: CompiledQuery): Promise<QueryResult<R>> => {
        this.queries.push(query)
        return { rows: /\breturning\b/i.test(query.sql) ? [{ seq: '1', hash: Buffer.alloc(32) } as R] : [] }
      },

      streamQuery: async function * () { throw new Error('not captured') },
    }
  }

  async beginTransaction (): Promise<void> {}
  async commitTransaction (): Promise<void> {}
  async rollbackTransaction (): Promise<void> {}
  async releaseConnection (): Promise<void> {}
  async destroy (): Promise<void> {}
}

function capturing (
  tables: TenantTables,
  scope: { tenantId: string, shard: number },
  leafReads: boolean
): { db: Kysely<DB>, raw: Kysely<DB>, driver: CaptureDriver } {
  const driver = new CaptureDriver()
  const db = new Kysely<DB>({
    dialect: {
      createAdapter: () => new PostgresAdapter(),
      createDriver: () => driver,
      createIntrospector: (k) => new PostgresIntrospector(k),
      createQueryCompiler: () => new PostgresQueryCompiler(),
    },
  })
  return { db: db.withPlugin(new TenantScopePlugin(tables, scope, { leafReads })), raw: db, driver }
}

// Placeholders of the captured statements, replaced by pgbench expressions.
const S = {
  tenant: 'aaaaaaaa-aaaa-7aaa-8aaa-aaaaaaaaaaaa',
  key: 'dddddddd-dddd-7ddd-8ddd-dddddddddddd',
  invoice: 'bbbbbbbb-bbbb-7bbb-8bbb-bbbbbbbbbbbb',
  customer: 'cccccccc-cccc-7ccc-8ccc-cccccccccccc',
  newInvoice: 'eeeeeeee-eeee-7eee-8eee-eeeeeeeeeeee',
  newEvent: 'ffffffff-ffff-7fff-8fff-ffffffffffff',
  shard: 987_654,
}

function literal (value: unknown): string {
  if (value === S.tenant) return `${sqlTenant(':t')}::uuid`
  if (value === S.key) return sqlUuid(':t', '9000-000000000000')
  if (value === S.customer) return sqlUuid(':t', 'a000-000000000000')
  if (value === S.invoice) {
    return "((lpad(to_hex(CAST(:t AS int)), 8, '0') || '-0000-7000-b000-' || " +
      "lpad(to_hex(CAST(:j AS int)), 12, '0')))::uuid"
  }
  // The new invoice's id appears in several statements: built from per-transaction random numbers.
  if (value === S.newInvoice) {
    return "((lpad(to_hex(CAST(:t AS int)), 8, '0') || '-0000-7000-c' || lpad(to_hex(CAST(:r1 AS int)), 3, '0') || " +
      "'-' || lpad(to_hex(CAST(:r2 AS bigint)), 12, '0')))::uuid"
  }
  if (value === S.newEvent) return 'gen_random_uuid()'
  if (value === S.shard) return `pooled_shard_for(${sqlTenant(':t')}::uuid)`
  if (value === null || value === undefined) return 'NULL'
  if (typeof value === 'number' || typeof value === 'bigint') return String(value)
  if (typeof value === 'string') return `'${value.replaceAll("'", "''")}'`
  if (Array.isArray(value)) return `ARRAY[${value.map(literal).join(', ')}]`
  throw new Error(`cannot inline ${typeof value}`)
}

/** A captured statement as a pgbench line: parameters become expressions of :t and :j. */
function inline (query: CompiledQuery): string {
  // pgbench would take the ':MI' of a to_char() format for a variable (in extended mode): a colon
  // inside a string literal becomes chr(58), which PostgreSQL folds back while planning.
  const colonFree = query.sql.replace(/'([^']*)'/g, (whole, body: string) => body.includes(':')
    ? `(${body.split(':').map((part) => `'${part}'`).join(' || chr(58) || ')})`
    : whole)
  return colonFree.replace(/\$(\d+)/g, (_, n: string) => literal(query.parameters[Number(n) - 1]))
    .replace(/\s+/g, ' ') + ';'
}

/** A pgbench script and its weight (pgbench -f file@weight). */
export interface PgbenchScript { sql: string, weight: number }

/**
 * The pgbench scripts for a scenario, each statement its own round trip:
 * - `naive`: the textbook per-request transaction — BEGIN, set_config, a key lookup, the route's
 *   statements on the parent tables, COMMIT (the reference the targets are set against); one script;
 * - `server`: exactly the statements the server sends — BEGIN, bind_tenant() (binding, lock,
 *   credential check and timeouts in one), the route's statements as the scoping plugin writes them
 *   (reads name the tenant's partition), COMMIT — but one at a time. A table name cannot be a
 *   pgbench variable, so there is one script per shard, picking only tenants of that shard, weighted
 *   by their number.
 * The route's statements are captured from the repository functions the routes call; `bindSql` is another
 * checkout's binding statement (its BIND_WITH_TIMEOUTS_SQL), for a server from before or after this one.
 */
export async function pgbenchScripts (
  scenario: Exclude<Scenario, 'healthz' | 'forged-key-huge-body'>,
  mode: 'naive' | 'server',
  tables: TenantTables,
  tenants: number,
  invoices: number,
  shards: Map<number, number[]>,
  bindSql = BIND_WITH_TIMEOUTS_SQL
): Promise<PgbenchScript[]> {
  if (mode === 'naive') return [{ sql: await script(scenario, mode, tables, tenants, invoices, undefined), weight: 1 }]
  const scripts: PgbenchScript[] = []
  for (const [shard, members] of shards) {
    scripts.push({
      sql: await script(scenario, mode, tables, tenants, invoices, { shard, members }, bindSql),
      weight: members.length,
    })
  }
  return scripts
}

async function script (
  scenario: Exclude<Scenario, 'healthz' | 'forged-key-huge-body'>,
  mode: 'naive' | 'server',
  tables: TenantTables,
  tenants: number,
  invoices: number,
  only: { shard: number, members: number[] } | undefined,
  bindSql = BIND_WITH_TIMEOUTS_SQL
): Promise<string> {
  const { db, raw, driver } = capturing(tables, { tenantId: S.tenant, shard: S.shard }, mode === 'server')
  if (scenario === 'get-invoice') {
    if (mode === 'server') await findInvoice(db, S.invoice)
    else await textbookFind(db, S.invoice)
  }
  if (scenario === 'list-invoices') {
    // The server renders the page in the database; the textbook reads rows and renders them itself.
    if (mode === 'server') await listInvoicePage(db, { limit: 50 })
    else await textbookList(db, 51)
  }
  if (scenario === 'create-invoice') {
    const priced = priceLines([LINE, LINE, LINE])
    const invoice = {
      id: S.newInvoice,
      customer_id: S.customer,
      currency: 'EUR',
      amount_cents: priced.amount_cents,
      due_date: null,
      memo: null,
    }
    if (mode === 'server') {
      await insertInvoice(db, invoice, priced.lines) // one statement: invoice and lines in CTEs, returned as read
    } else {
      // The textbook way: the invoice, its lines, then the invoice read back with its lines.
      await db.insertInto('invoices').values(invoice).execute()
      await db.insertInto('invoice_lines').values(priced.lines.map((l) => ({
        invoice_id: S.newInvoice,
        position: l.position,
        description: l.description,
        quantity: l.quantity,
        unit_amount_cents: l.unit_amount_cents,
        amount_cents: l.amount_cents,
      }))).execute()
      await textbookFind(db, S.newInvoice)
    }
    await insertAuditEvent(db, {
      id: S.newEvent,
      actor_type: 'api_key',
      actor_id: S.key,
      action: 'invoice.created',
      resource_type: 'invoice',
      resource_id: S.newInvoice,
      request_id: 'bench',
      data: JSON.stringify({ amount_cents: priced.amount_cents, currency: 'EUR' }),
    })
  }
  const route = [...driver.queries]
  driver.queries.length = 0
  let opening: string[]
  if (mode === 'server') {
    opening = [bindSql.replace('$1', sqlTenant(':t')).replace('$2', literal(S.key)).replace('$3', 'NULL')
      .replace('$4', "'5000'").replace('$5', "'10000'").replace('$6', "'{}'").replace('$7', 'false')
      .replace(/\s+/g, ' ') + ';']
  } else {
    await raw.selectFrom('api_keys').select(['id', 'scopes', 'secret_hash'])
      .where('tenant_id', '=', S.tenant).where('id', '=', S.key).where('revoked_at', 'is', null).execute()
    opening = [`SELECT set_config('app.current_tenant_id', ${sqlTenant(':t')}, true);`, ...driver.queries.map(inline)]
  }
  // The tenant: any of 1..tenants, or (one script per shard) one of that shard's, by a CASE on :i.
  const cases = only === undefined
    ? ''
    : only.members.slice(0, -1).map((m, k) => `when :i = ${k} then ${m}`).join(' ')
  const pick = only === undefined
    ? [`\\set t random(1, ${tenants})`]
    : [
        `\\set i random(0, ${only.members.length - 1})`,
        `\\set t ${only.members.length === 1 ? only.members[0]! : `case ${cases} else ${only.members.at(-1)!} end`}`,
      ]
  const statements = [...opening, ...route.map(inline)].map((line) => only === undefined
    ? line
    : line.replaceAll(`_s${S.shard}"`, `_s${only.shard}"`)
      .replaceAll(`pooled_shard_for(${sqlTenant(':t')}::uuid)`, String(only.shard)))
  return [
    ...pick,
    `\\set j random(1, ${invoices})`,
    '\\set r1 random(0, 4095)',
    '\\set r2 random(0, 281474976710655)',
    scenario === 'create-invoice' ? 'BEGIN;' : 'BEGIN READ ONLY;',
    ...statements,
    'COMMIT;',
    '',
  ].join('\n')
}
