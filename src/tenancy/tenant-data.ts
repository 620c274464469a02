import pg from 'pg'
import QueryStream from 'pg-query-stream'
import { type ExportCheck, ExportSignatureError, readExport, signExport, verifyExport } from './export-signature.ts'

/**
 * A tenant's data as a whole: every table holding tenant rows, found in the catalog (so a new table
 * is exported and erased without code changes), in foreign-key order.
 */
export interface TenantTableInfo {
  name: string
  /** tenant_id, or id for the tenants registry. */
  keyColumn: string
  sharded: boolean
  /** Columns that travel in an export (placement columns stay behind: they belong to a deployment). */
  columns: string[]
  /** Export order: the primary key without shard, or seq for a hash-chained table. */
  orderBy: string[]
}

/**
 * Columns that describe where and how a deployment keeps a tenant, not the tenant's data: its placement,
 * and the operator's idempotency record of its creation (sql/0016).
 */
const PLACEMENT_COLUMNS: Record<string, string[]> = {
  tenants: ['shard', 'placement', 'status', 'creation_key_hash', 'creation_request_hash'],
  '*': ['shard'],
}

/** Columns the database derives from other rows: never exported, never taken from a file (the
 * import's own rows rebuild them). invoices.lines is kept from invoice_lines (sql/0014). */
const DERIVED_COLUMNS: Record<string, string[]> = { invoices: ['lines'] }

const CHAIN_COLUMNS = ['seq', 'prev_hash', 'hash']

const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`

/** Tenant tables, parents before children (tenants first): the order to export and import in. */
export async function tenantTablesInOrder (client: pg.ClientBase): Promise<TenantTableInfo[]> {
  const { rows } = await client.query<{ name: string, sharded: boolean, columns: string[], pk: string[], has_seq: boolean }>(`
    SELECT c.relname AS name,
           c.relkind = 'p' AS sharded,
           array(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)::text[] AS columns,
           array(SELECT a.attname FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)::text[] AS pk,
           EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'seq' AND NOT a.attisdropped) AS has_seq
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND (c.relname = 'tenants' OR EXISTS (SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped))`)
  const { rows: edges } = await client.query<{ child: string, parent: string }>(`
    SELECT DISTINCT cc.relname AS child, pc.relname AS parent
      FROM pg_constraint k
      JOIN pg_class cc ON cc.oid = k.conrelid
      JOIN pg_class pc ON pc.oid = k.confrelid
     WHERE k.contype = 'f' AND NOT cc.relispartition AND NOT pc.relispartition AND cc.oid <> pc.oid`)
  const byName = new Map(rows.map((r) => [r.name, r]))
  const parents = new Map<string, Set<string>>(rows.map((r) => [r.name, new Set()]))
  for (const e of edges) if (byName.has(e.child) && byName.has(e.parent)) parents.get(e.child)!.add(e.parent)
  // Topological order, ties broken by name so the order (and every export) is deterministic.
  const ordered: string[] = []
  const placed = new Set<string>()
  while (ordered.length < rows.length) {
    const ready = [...parents.keys()].filter((n) => !placed.has(n) && [...parents.get(n)!].every((p) => placed.has(p))).sort()
    if (ready.length === 0) throw new Error('tenant tables have a foreign-key cycle')
    for (const n of ready) { ordered.push(n); placed.add(n) }
  }
  return ordered.map((name) => {
    const r = byName.get(name)!
    const excluded = PLACEMENT_COLUMNS[name] ?? PLACEMENT_COLUMNS['*']!
    return {
      name,
      keyColumn: name === 'tenants' ? 'id' : 'tenant_id',
      sharded: r.sharded,
      columns: r.columns.filter((c) => !excluded.includes(c) && !(DERIVED_COLUMNS[name] ?? []).includes(c)),
      orderBy: r.has_seq ? ['seq'] : r.pk.filter((c) => c !== 'shard'),
    }
  })
}

/** Binds a tenant on an owner connection: FORCE RLS then shows the owner exactly that tenant. */
async function bind (client: pg.ClientBase, tenantId: string): Promise<void> {
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenantId])
}

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
    await bind(client, tenantId)
    await client.query("SET LOCAL TimeZone = 'UTC'")
    const found = await client.query('SELECT 1 FROM tenants WHERE id = $1', [tenantId])
    if (found.rowCount === 0) throw new TenantNotFound(`tenant ${tenantId} not found`)
    const tables = await tenantTablesInOrder(client)
    if (onPlan !== undefined) {
      const counts: ExportPlan['tables'] = []
      for (const t of tables) {
        const { rows: [r] } = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${ident(t.name)} WHERE ${ident(t.keyColumn)} = $1`, [tenantId])
        counts.push({ name: t.name, rows: Number(r!.n) })
      }
      onPlan({ tables: counts, total: counts.reduce((s, c) => s + c.rows, 0) })
    }
    for (const t of tables) {
      const prefix = `{"table":${JSON.stringify(t.name)},"row":`
      const text = `SELECT row_to_json(r)::text AS j FROM (SELECT ${t.columns.map(ident).join(', ')} FROM ${ident(t.name)}
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

export interface ImportResult {
  tenantId: string
  rows: Record<string, number>
  /** False only for an unsigned export let in by allowUnsigned. */
  signed: boolean
}

export interface ImportOptions {
  /** EXPORT_SIGNING_KEY, which the export's signature must verify with. */
  signingKey: string | undefined
  /** Accept an export without a signature (from before exports were signed): nothing vouches for it. */
  allowUnsigned?: boolean
  /** Called once the whole file has been checked, before anything is written. */
  onVerified?: (check: ExportCheck) => void
  onRows?: (n: number) => void
}

export class ImportError extends Error {
  override name = 'ImportError'
}

/** A refused signature is an import refused: one error type for callers, the message kept. */
const asImportError = (error: unknown): never => {
  throw error instanceof ExportSignatureError ? new ImportError(error.message) : error
}

/**
 * Loads an export into this deployment, in one transaction as the owner (all or nothing). The
 * tenant must not exist yet. `open` gives the export's bytes and is called twice: a first pass checks
 * the signature over the whole file before anything is written (the signature is what vouches for
 * the content); the import pass checks it again before committing, in case the file changed between.
 * Tables arrive parents first; the audit chain is re-linked by its trigger as events arrive in seq
 * order, and the result must equal the exported chain head (a second, weaker check: anyone can
 * recompute an unkeyed chain). `placeShard` chooses where the tenant lives here.
 *
 * An export made by an older schema lacks the columns added since: a column a row does not carry
 * gets this database's default (a NOT NULL column without one is refused with the line). Keys from
 * before owner rights existed (sql/0010) get them as that migration gave them: the initial admin key only;
 * memberships from before invitations (sql/0017) count as accepted, as that migration counted them.
 */
export async function importTenant (
  pool: pg.Pool,
  open: () => AsyncIterable<Buffer | string>,
  placeShard: (client: pg.ClientBase, tenantId: string) => Promise<{ shard: number, placement: string }>,
  options: ImportOptions
): Promise<ImportResult> {
  const { onRows } = options
  const reading = { key: options.signingKey, allowUnsigned: options.allowUnsigned }
  const verified = await verifyExport(open(), reading).catch(asImportError)
  options.onVerified?.(verified)
  const client = await pool.connect()
  const iterator = readExport(open(), reading)
  let ok = false
  try {
    await client.query('BEGIN')
    await client.query("SET LOCAL TimeZone = 'UTC'")
    const tables = new Map((await tenantTablesInOrder(client)).map((t) => [t.name, t]))
    const order = [...tables.keys()]
    // Columns a row must carry: NOT NULL with no default (nor identity or generated value) here.
    const { rows: requiredRows } = await client.query<{ table_name: string, column_name: string }>(`
      SELECT c.relname AS table_name, a.attname AS column_name
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND c.relname = ANY ($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped
         AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''`, [order])
    const required = new Set(requiredRows.map((r) => `${r.table_name}.${r.column_name}`))
    const counts: Record<string, number> = {}
    let tenantId: string | undefined
    let exportedHead: Record<string, unknown> | undefined
    const keysBeforeOwnerRights: string[] = []
    const membershipsBeforeAcceptance: string[] = []
    // A batch holds rows of one table that carry the same columns (every row of an export does).
    let batch: { table: string, columns: string[], rows: Array<Record<string, unknown>> } | undefined
    let position = 0

    const flush = async (): Promise<void> => {
      if (batch === undefined || batch.rows.length === 0) return
      const info = tables.get(batch.table)!
      const cols = batch.columns.map(ident).join(', ')
      await client.query(`INSERT INTO ${ident(info.name)} (${cols}) SELECT ${cols} FROM json_populate_recordset(NULL::${ident(info.name)}, $1::json)`,
        [JSON.stringify(batch.rows)])
      counts[batch.table] = (counts[batch.table] ?? 0) + batch.rows.length
      onRows?.(batch.rows.length)
      batch.rows = []
    }

    let lineNo = 0
    for (;;) {
      const step = await iterator.next().catch(asImportError)
      if (step.done === true) {
        // The file changed since it was verified: a valid signature both times, but not the same file.
        if (step.value.signed !== verified.signed || step.value.lines !== verified.lines) {
          throw new ImportError('the export changed while it was imported')
        }
        break
      }
      const raw = step.value
      lineNo++
      if (raw.trim() === '') continue
      let parsed: { table?: unknown, row?: unknown }
      try {
        parsed = JSON.parse(raw) as { table?: unknown, row?: unknown }
      } catch {
        throw new ImportError(`line ${lineNo}: not JSON`)
      }
      const { table, row } = parsed
      if (typeof table !== 'string' || !tables.has(table) || row === null || typeof row !== 'object') {
        throw new ImportError(`line ${lineNo}: expected {"table": <a tenant table>, "row": {...}}`)
      }
      const record = row as Record<string, unknown>
      if (tenantId === undefined) {
        if (table !== 'tenants' || typeof record.id !== 'string') throw new ImportError('the export must start with the tenants row')
        tenantId = record.id
        const exists = await client.query('SELECT 1 FROM tenants WHERE id = $1 OR slug = $2', [tenantId, record.slug])
        if (exists.rowCount !== 0) throw new ImportError(`a tenant with id ${tenantId} or slug ${String(record.slug)} already exists here`)
        await bind(client, tenantId)
        const { shard, placement } = await placeShard(client, tenantId)
        await client.query('INSERT INTO tenants (id, name, slug, created_at, shard, placement) VALUES ($1, $2, $3, $4, $5, $6)',
          [tenantId, record.name, record.slug, record.created_at, shard, placement])
        counts.tenants = 1
        onRows?.(1)
        continue
      }
      const key = table === 'tenants' ? record.id : record.tenant_id
      if (key !== tenantId) throw new ImportError(`line ${lineNo}: a row of another tenant`)
      const at = order.indexOf(table)
      if (at < position) throw new ImportError(`line ${lineNo}: ${table} rows must come before ${order[position]} rows`)
      position = at
      if (table === 'audit_heads') { exportedHead = record; continue } // rebuilt by the chaining trigger
      const info = tables.get(table)!
      // The audit chain's own columns are recomputed by its trigger as events arrive in order; the
      // result is compared with the exported chain head at the end.
      const insertable = info.columns.filter((c) => table !== 'audit_events' || !CHAIN_COLUMNS.includes(c))
      const absent = insertable.filter((c) => !Object.hasOwn(record, c))
      const needed = absent.filter((c) => required.has(`${table}.${c}`))
      if (needed.length > 0) throw new ImportError(`line ${lineNo}: the ${table} row has no ${needed.join(', ')}, which this database requires`)
      if (table === 'api_keys' && absent.includes('owner_rights')) keysBeforeOwnerRights.push(String(record.id))
      if (table === 'memberships' && absent.includes('accepted_at')) membershipsBeforeAcceptance.push(String(record.id))
      const columns = insertable.filter((c) => !absent.includes(c))
      if (batch?.table !== table || batch.columns.join() !== columns.join()) { await flush(); batch = { table, columns, rows: [] } }
      batch.rows.push(record)
      if (batch.rows.length >= 500) await flush()
    }
    await flush()
    if (tenantId === undefined) throw new ImportError('the export is empty')
    if (membershipsBeforeAcceptance.length > 0) {
      // sql/0017 counted the memberships that existed then as accepted: so do imports of their exports.
      await client.query('UPDATE memberships SET accepted_at = created_at WHERE tenant_id = $1 AND id = ANY ($2::uuid[])',
        [tenantId, membershipsBeforeAcceptance])
    }
    if (keysBeforeOwnerRights.length > 0) {
      // What sql/0010 did to the keys of the tenants that existed then: only the initial key (the
      // first, created with the tenant by the operator) keeps owner rights, and only with the admin scope.
      await client.query(`UPDATE api_keys k SET owner_rights = true
        WHERE k.tenant_id = $1 AND 'admin' = ANY (k.scopes) AND k.id = ANY ($2::uuid[])
          AND k.id = (SELECT f.id FROM api_keys f WHERE f.tenant_id = $1 ORDER BY f.created_at, f.id LIMIT 1)`, [tenantId, keysBeforeOwnerRights])
    }
    if (exportedHead === undefined && (counts.audit_events ?? 0) > 0) {
      throw new ImportError('the export has audit events but no audit_heads row: the export was altered')
    }
    if (exportedHead !== undefined) {
      const { rows: [head] } = await client.query<{ seq: string, hash: string }>("SELECT seq::text, '\\x' || encode(hash, 'hex') AS hash FROM audit_heads WHERE tenant_id = $1", [tenantId])
      if (head === undefined || head.seq !== String(exportedHead.seq) || head.hash !== exportedHead.hash) {
        throw new ImportError('the imported audit trail does not reproduce the exported chain head: the export was altered')
      }
      counts.audit_heads = 1
    }
    await client.query('COMMIT')
    ok = true
    return { tenantId, rows: counts, signed: verified.signed }
  } finally {
    if (!ok) await client.query('ROLLBACK').catch(() => {})
    client.release()
    // Stopped early (a refused line): close the file rather than leave it to the garbage collector.
    await iterator.return(verified)
  }
}
