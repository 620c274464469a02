import type pg from 'pg'
import { type ExportCheck, ExportSignatureError, readExport, verifyExport } from './export-signature.ts'
import { bindOwner, exportedTables, ident } from './tenant-tables.ts'

/** The audit chain's own columns: its trigger recomputes them, so they are never taken from a file. */
const CHAIN_COLUMNS = ['seq', 'prev_hash', 'hash']

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
    // What an operator export carries, no more: a file naming another table (an export's own chunks) is refused.
    const tables = new Map((await exportedTables(client, 'operator')).map((t) => [t.name, t]))
    const order = [...tables.keys()]
    const required = await requiredColumns(client, order)
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
      await client.query(`INSERT INTO ${ident(info.name)} (${cols})
                          SELECT ${cols} FROM json_populate_recordset(NULL::${ident(info.name)}, $1::json)`,
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
        if (table !== 'tenants' || typeof record.id !== 'string') {
          throw new ImportError('the export must start with the tenants row')
        }
        tenantId = record.id
        const exists = await client.query('SELECT 1 FROM tenants WHERE id = $1 OR slug = $2', [tenantId, record.slug])
        if (exists.rowCount !== 0) {
          throw new ImportError(`a tenant with id ${tenantId} or slug ${String(record.slug)} already exists here`)
        }
        await bindOwner(client, tenantId)
        const { shard, placement } = await placeShard(client, tenantId)
        await client.query(`INSERT INTO tenants (id, name, slug, created_at, shard, placement)
                            VALUES ($1, $2, $3, $4, $5, $6)`,
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
      if (needed.length > 0) {
        const missing = needed.join(', ')
        throw new ImportError(`line ${lineNo}: the ${table} row has no ${missing}, which this database requires`)
      }
      if (table === 'api_keys' && absent.includes('owner_rights')) keysBeforeOwnerRights.push(String(record.id))
      if (table === 'memberships' && absent.includes('accepted_at')) membershipsBeforeAcceptance.push(String(record.id))
      const columns = insertable.filter((c) => !absent.includes(c))
      if (batch?.table !== table || batch.columns.join() !== columns.join()) {
        await flush()
        batch = { table, columns, rows: [] }
      }
      batch.rows.push(record)
      if (batch.rows.length >= 500) await flush()
    }
    await flush()
    if (tenantId === undefined) throw new ImportError('the export is empty')
    await upgradeOlderRows(client, tenantId, membershipsBeforeAcceptance, keysBeforeOwnerRights)
    if (exportedHead === undefined && (counts.audit_events ?? 0) > 0) {
      throw new ImportError('the export has audit events but no audit_heads row: the export was altered')
    }
    if (exportedHead !== undefined) {
      await checkChainHead(client, tenantId, exportedHead)
      counts.audit_heads = 1
    }
    await client.query('COMMIT')
    ok = true
    return { tenantId, rows: counts, signed: verified.signed }
  } finally {
    // The import's own error is the one thrown; a connection that cannot roll back is discarded.
    const broken = ok ? undefined : await client.query('ROLLBACK').then(() => undefined, (error: Error) => error)
    client.release(broken)
    // Stopped early (a refused line): close the file rather than leave it to the garbage collector.
    await iterator.return(verified)
  }
}

/** Columns a row must carry: NOT NULL with no default (nor identity or generated value) here. */
async function requiredColumns (client: pg.ClientBase, tables: string[]): Promise<Set<string>> {
  const { rows } = await client.query<{ table_name: string, column_name: string }>(`
    SELECT c.relname AS table_name, a.attname AS column_name
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relname = ANY ($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''`, [tables])
  return new Set(rows.map((r) => `${r.table_name}.${r.column_name}`))
}

/** Rows exported before a migration changed their meaning get what that migration gave the rows it found. */
async function upgradeOlderRows (
  client: pg.ClientBase, tenantId: string, membershipsBeforeAcceptance: string[], keysBeforeOwnerRights: string[]
): Promise<void> {
  if (membershipsBeforeAcceptance.length > 0) {
    // sql/0017 counted the memberships that existed then as accepted: so do imports of their exports.
    await client.query(
      'UPDATE memberships SET accepted_at = created_at WHERE tenant_id = $1 AND id = ANY ($2::uuid[])',
      [tenantId, membershipsBeforeAcceptance])
  }
  if (keysBeforeOwnerRights.length > 0) {
    // What sql/0010 did to the keys of the tenants that existed then: only the initial key (the
    // first, created with the tenant by the operator) keeps owner rights, and only with the admin scope.
    await client.query(`UPDATE api_keys k SET owner_rights = true
      WHERE k.tenant_id = $1 AND 'admin' = ANY (k.scopes) AND k.id = ANY ($2::uuid[])
        AND k.id = (SELECT f.id FROM api_keys f WHERE f.tenant_id = $1 ORDER BY f.created_at, f.id LIMIT 1)`,
    [tenantId, keysBeforeOwnerRights])
  }
}

/** The chain the trigger rebuilt must end where the exported one did. */
async function checkChainHead (
  client: pg.ClientBase, tenantId: string, exported: Record<string, unknown>
): Promise<void> {
  const { rows: [head] } = await client.query<{ seq: string, hash: string }>(
    "SELECT seq::text, '\\x' || encode(hash, 'hex') AS hash FROM audit_heads WHERE tenant_id = $1", [tenantId])
  if (head === undefined || head.seq !== String(exported.seq) || head.hash !== exported.hash) {
    throw new ImportError('the imported audit trail does not reproduce the exported chain head: the export was altered')
  }
}
