import type pg from 'pg'

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

/**
 * Tables whose rows are files the deployment made for the tenant, not the tenant's data: its own exports
 * (POST /v1/exports, sql/0019), discarded when they expire. No export carries them, so no import loads
 * them; erasure (which walks tenantTablesInOrder) removes them with the rest.
 */
export const EPHEMERAL_TABLES: readonly string[] = ['tenant_exports', 'tenant_export_chunks']

/**
 * Secrets, left out of the tenant's own export: an API key's hash, and the webhook signing secrets
 * sealed with the server key. The operator export keeps them, so that keys and endpoints work after an
 * import: a sealed secret opens only with the WEBHOOK_SECRET_KEY it was sealed with (and only for the same
 * tenant and endpoint ids), so the deployment importing it needs the same key.
 */
export const SECRET_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  api_keys: ['secret_hash'],
  webhook_endpoints: ['secret_sealed', 'previous_secret_sealed'],
}

/**
 * Who an export is for: the operator (everything, signed, for an import elsewhere) or the tenant itself
 * (its data less the secrets, POST /v1/exports).
 */
export type ExportAudience = 'operator' | 'tenant'

/** The tables an export carries, in export order, with the columns it carries for `audience`. */
export async function exportedTables (client: pg.ClientBase, audience: ExportAudience): Promise<TenantTableInfo[]> {
  return (await tenantTablesInOrder(client))
    .filter((t) => !EPHEMERAL_TABLES.includes(t.name))
    .map((t) => {
      const secret = audience === 'tenant' ? SECRET_COLUMNS[t.name] ?? [] : []
      return secret.length === 0 ? t : { ...t, columns: t.columns.filter((c) => !secret.includes(c)) }
    })
}

/** A quoted SQL identifier, for the names read from the catalog. */
export const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`

/** Tenant tables, parents before children (tenants first): the order to export and import in. */
export async function tenantTablesInOrder (client: pg.ClientBase): Promise<TenantTableInfo[]> {
  type Table = { name: string, sharded: boolean, columns: string[], pk: string[], has_seq: boolean }
  const { rows } = await client.query<Table>(`
    SELECT c.relname AS name,
           c.relkind = 'p' AS sharded,
           array(SELECT a.attname FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum)::text[] AS columns,
           array(SELECT a.attname FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)::text[] AS pk,
           EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attname = 'seq' AND NOT a.attisdropped) AS has_seq
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
    const ready = [...parents.keys()]
      .filter((n) => !placed.has(n) && [...parents.get(n)!].every((p) => placed.has(p))).sort()
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
export async function bindOwner (client: pg.ClientBase, tenantId: string): Promise<void> {
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenantId])
}
