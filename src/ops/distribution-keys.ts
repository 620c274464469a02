import type pg from 'pg'
import { USER_SCHEMAS } from './runtime-privileges.ts'

/**
 * Distribution readiness: every primary key, unique constraint or index and foreign key of a tenant
 * table includes tenant_id, and every foreign key matches it with the referenced table's tenant. That
 * is what keeps uniqueness from acting as a cross-tenant existence oracle, keeps references inside a
 * tenant, and lets the schema be distributed by tenant_id (Citus). The tenants registry is the
 * exception by design (a reference table there).
 */
export async function checkDistributionKeys (client: pg.ClientBase, problems: string[]): Promise<void> {
  const { rows } = await client.query<{ table_name: string, name: string, kind: string }>(`
    WITH tenant_tables AS (
      SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ${USER_SCHEMAS} AND c.relname <> 'tenants'
         AND EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
    ), tenant_attnum AS (
      SELECT a.attrelid, a.attnum FROM pg_attribute a JOIN tenant_tables t ON t.oid = a.attrelid
       WHERE a.attname = 'tenant_id'
    )
    SELECT k.conrelid::regclass::text AS table_name, k.conname AS name,
           CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint' ELSE 'foreign key' END AS kind
      FROM pg_constraint k JOIN tenant_attnum ta ON ta.attrelid = k.conrelid
     WHERE k.contype IN ('p', 'u', 'f') AND NOT (ta.attnum = ANY (k.conkey))
    UNION ALL
    SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, 'unique index'
      FROM pg_index i JOIN tenant_attnum ta ON ta.attrelid = i.indrelid
     WHERE i.indisunique AND NOT (ta.attnum = ANY (i.indkey::int2[]))
       AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
     ORDER BY 1, 2`)
  for (const r of rows) {
    problems.push(`table ${r.table_name}: ${r.kind} ${r.name} does not include tenant_id ` +
      '(a global key is a cross-tenant existence oracle, and blocks distribution by tenant)')
  }

  // A foreign key that includes tenant_id must also match it with the referenced table's tenant_id
  // (tenants.id for the registry), position by position: (tenant_id, customer_id) REFERENCES
  // customers (id, tenant_id) includes tenant_id yet lets a row point at another tenant's customer.
  // Only the declared constraints (conparentid = 0), not the copies PostgreSQL keeps per partition.
  type Crossed = { table_name: string, name: string, referenced: string, column_name: string }
  const { rows: crossed } = await client.query<Crossed>(`
    WITH tenant_tables AS (
      SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ${USER_SCHEMAS} AND c.relname <> 'tenants'
         AND EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
    )
    SELECT k.conrelid::regclass::text AS table_name, k.conname AS name,
           k.confrelid::regclass::text AS referenced, ra.attname AS column_name
      FROM pg_constraint k
      JOIN tenant_tables t ON t.oid = k.conrelid
      JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attname = 'tenant_id'
      CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS own(attnum, position)
      JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.confkey[own.position]
      JOIN pg_class rc ON rc.oid = k.confrelid
      JOIN pg_namespace rn ON rn.oid = rc.relnamespace
     WHERE k.contype = 'f' AND k.conparentid = 0 AND own.attnum = a.attnum
       AND ra.attname <> CASE WHEN rn.nspname = 'public' AND rc.relname = 'tenants' THEN 'id' ELSE 'tenant_id' END
     ORDER BY 1, 2`)
  for (const r of crossed) {
    const other = `${r.referenced}.${r.column_name}`
    problems.push(`table ${r.table_name}: foreign key ${r.name} matches tenant_id with ${other}, ` +
      'not with the referenced tenant (a reference could point into another tenant)')
  }
}
