import pg from 'pg'

/**
 * Start-up safety checks, run over the *runtime* connection so they judge exactly the role that
 * serves requests. Each finding is one sentence naming the role or table. An empty list means the
 * isolation guarantees hold: the server refuses to start (and /readyz reports 503) otherwise.
 */
export interface SafetyReport {
  ok: boolean
  role: string
  tenantTables: number
  problems: string[]
}

interface TableRow {
  table_name: string
  is_registry: boolean
  relispartition: boolean
  relrowsecurity: boolean
  relforcerowsecurity: boolean
  runtime_owns: boolean
  can_truncate: boolean
  can_reference: boolean
  can_trigger: boolean
  can_select: boolean
}

interface PolicyRow {
  table_name: string
  polname: string
  polpermissive: boolean
  polcmd: string
  using_expr: string | null
  check_expr: string | null
}

const USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"

/** Tables holding tenant data: every table with a tenant_id column, plus the tenant registry. */
const TABLES_SQL = `
SELECT c.oid::regclass::text AS table_name,
       (n.nspname = 'public' AND c.relname = 'tenants') AS is_registry,
       c.relispartition, c.relrowsecurity, c.relforcerowsecurity,
       pg_has_role(current_user, c.relowner, 'MEMBER') AS runtime_owns,
       has_table_privilege(current_user, c.oid, 'TRUNCATE') AS can_truncate,
       has_table_privilege(current_user, c.oid, 'REFERENCES') AS can_reference,
       has_table_privilege(current_user, c.oid, 'TRIGGER') AS can_trigger,
       has_table_privilege(current_user, c.oid, 'SELECT') AS can_select
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND ${USER_SCHEMAS}
   AND (EXISTS (SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped)
        OR (n.nspname = 'public' AND c.relname = 'tenants'))
 ORDER BY 1`

/** Policies that apply to the current (runtime) role, directly, through PUBLIC or through a membership. */
const POLICIES_SQL = `
SELECT p.polrelid::regclass::text AS table_name, p.polname, p.polpermissive, p.polcmd::text AS polcmd,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
  FROM pg_policy p
 WHERE 0::oid = ANY (p.polroles)
    OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(oid) WHERE pg_has_role(current_user, r.oid, 'MEMBER'))`

function canonical (table: TableRow): string {
  return `(${table.is_registry ? 'id' : 'tenant_id'} = current_tenant_id())`
}

function checkPolicies (table: TableRow, policies: PolicyRow[], problems: string[]): void {
  const expected = canonical(table)
  const permissive = policies.filter((p) => p.polpermissive)
  if (permissive.length === 0) {
    problems.push(`table ${table.table_name} has no row-level security policy for the runtime role`)
    return
  }
  for (const p of permissive) {
    // polcmd: r SELECT, a INSERT, w UPDATE, d DELETE, * ALL. INSERT has no USING; SELECT and DELETE
    // have no WITH CHECK; ALL and UPDATE fall back to USING when WITH CHECK is absent.
    const checksRows = p.polcmd !== 'a'
    const checksWrites = p.polcmd === 'a' || p.polcmd === 'w' || p.polcmd === '*'
    if (checksRows && p.using_expr !== expected) {
      problems.push(`table ${table.table_name}: policy ${p.polname} has USING ${p.using_expr ?? '(none)'}, expected ${expected}`)
    }
    const effectiveCheck = p.check_expr ?? (p.polcmd === 'a' ? null : p.using_expr)
    if (checksWrites && effectiveCheck !== expected) {
      problems.push(`table ${table.table_name}: policy ${p.polname} has WITH CHECK ${effectiveCheck ?? '(none)'}, expected ${expected}`)
    }
  }
}

async function checkRole (client: pg.ClientBase, problems: string[]): Promise<string> {
  const { rows: [role] } = await client.query<{ role: string, rolsuper: boolean, rolbypassrls: boolean, rolcreaterole: boolean, rolcreatedb: boolean, owns_database: boolean }>(`
    SELECT current_user AS role, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
           pg_has_role(current_user, d.datdba, 'MEMBER') AS owns_database
      FROM pg_roles r, pg_database d
     WHERE r.rolname = current_user AND d.datname = current_database()`)
  if (role === undefined) throw new Error('cannot read the runtime role from pg_roles')
  const name = role.role
  if (role.rolsuper) problems.push(`runtime role ${name} is a superuser: superusers bypass row-level security`)
  if (role.rolbypassrls) problems.push(`runtime role ${name} has BYPASSRLS: it would bypass row-level security`)
  if (role.rolcreaterole) problems.push(`runtime role ${name} has CREATEROLE: it could grant itself the owner's rights`)
  if (role.rolcreatedb) problems.push(`runtime role ${name} has CREATEDB: the runtime role must be NOCREATEDB`)
  if (role.owns_database) problems.push(`runtime role ${name} owns the database: use the owner role for DATABASE_URL and a separate runtime role`)

  // Every role the runtime role is a member of, directly or through other roles (pg_auth_members,
  // followed recursively; a member can SET ROLE to it whether or not it inherits), with the chain.
  const elevated = await client.query<{ rolname: string, via: string[], attributes: string[] }>(`
    WITH RECURSIVE granted (roleid, path) AS (
      SELECT m.roleid, ARRAY[]::oid[] FROM pg_auth_members m WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      UNION ALL
      SELECT m.roleid, g.path || g.roleid FROM pg_auth_members m JOIN granted g ON m.member = g.roleid
       WHERE NOT m.roleid = ANY (g.path || g.roleid)
    )
    SELECT DISTINCT ON (r.rolname) r.rolname,
           array(SELECT v.rolname FROM unnest(g.path) WITH ORDINALITY AS u(oid, n) JOIN pg_roles v ON v.oid = u.oid ORDER BY u.n)::text[] AS via,
           array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END,
                              CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, CASE WHEN r.rolcreatedb THEN 'CREATEDB' END], NULL) AS attributes
      FROM granted g JOIN pg_roles r ON r.oid = g.roleid
     WHERE r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb
     ORDER BY r.rolname, cardinality(g.path)`)
  for (const r of elevated.rows) {
    const via = r.via.length === 0 ? '' : ` (through ${r.via.join(' → ')})`
    problems.push(`runtime role ${name} is a member of ${r.rolname}${via}, which has ${r.attributes.join(', ')}: it can act with that role's rights`)
  }

  const schemas = await client.query<{ nspname: string }>(`
    SELECT n.nspname FROM pg_namespace n
     WHERE ${USER_SCHEMAS} AND has_schema_privilege(current_user, n.oid, 'CREATE')`)
  for (const s of schemas.rows) problems.push(`runtime role ${name} may create objects in schema ${s.nspname}`)
  return name
}

type TablePrivilege = 'SELECT' | 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE' | 'REFERENCES' | 'TRIGGER'

/**
 * Every table privilege the runtime role may hold: `true` for the whole table, or the columns. Any
 * other privilege it holds (directly, through PUBLIC or through a role it belongs to) is refused, so
 * a grant nobody uses cannot creep in: a migration that grants more must add it here. A partition
 * may hold what its partitioned table may. Kept to what the runtime code uses (request.db, tenant
 * transactions, the key-usage flush); the migrations grant exactly this (sql/0010_least_privilege.sql).
 */
export const RUNTIME_PRIVILEGES: Readonly<Record<string, Partial<Record<TablePrivilege, true | readonly string[]>>>> = {
  tenants: { SELECT: true },
  api_keys: { SELECT: true, INSERT: true, UPDATE: ['last_used_at', 'revoked_at'] },
  // UPDATE (role) is never written: it is what SELECT ... FOR UPDATE (the owners' row locks) requires.
  memberships: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['role', 'accepted_at'] },
  customers: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['name', 'email', 'external_ref', 'updated_at'] },
  invoices: {
    SELECT: true,
    INSERT: ['tenant_id', 'id', 'customer_id', 'number', 'status', 'currency', 'amount_cents', 'due_date', 'memo', 'created_at',
      'updated_at', 'finalized_at', 'paid_at', 'voided_at'],
    UPDATE: ['customer_id', 'number', 'status', 'currency', 'amount_cents', 'due_date', 'memo', 'updated_at', 'finalized_at',
      'paid_at', 'voided_at'],
  },
  invoice_lines: { SELECT: true, DELETE: true, INSERT: ['tenant_id', 'invoice_id', 'position', 'description', 'quantity', 'unit_amount_cents', 'amount_cents'] },
  invoice_counters: { SELECT: true, INSERT: true, UPDATE: ['last_number'] },
  idempotency_keys: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['status', 'response'] },
  // Not occurred_at nor the chain columns: the database sets those (sql/0011_audit_hardening.sql).
  audit_events: { SELECT: true, INSERT: ['tenant_id', 'id', 'actor_type', 'actor_id', 'action', 'resource_type', 'resource_id', 'request_id', 'data'] },
  audit_heads: { SELECT: true },
  // The tenant's verification records how far it got; never created_at (sql/0015_audit_checkpoints.sql).
  audit_checkpoints: { SELECT: true, INSERT: ['tenant_id', 'seq', 'hash'] },
}

async function checkPrivileges (client: pg.ClientBase, role: string, problems: string[]): Promise<void> {
  // Whole-table privileges, then column privileges held without the whole-table one. has_*_privilege
  // counts grants to the role, to PUBLIC and to every role it inherits from.
  const { rows } = await client.query<{ table_name: string, root: string, privilege: TablePrivilege, columns: string[] | null }>(`
    WITH rels AS (
      SELECT c.oid, c.oid::regclass::text AS table_name, coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS root
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ${USER_SCHEMAS}
    )
    SELECT r.table_name, r.root, p.privilege, NULL::text[] AS columns
      FROM rels r CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
     WHERE has_table_privilege(current_user, r.oid, p.privilege)
    UNION ALL
    SELECT r.table_name, r.root, p.privilege,
           array(SELECT a.attname FROM pg_attribute a
                  WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
                    AND has_column_privilege(current_user, r.oid, a.attnum, p.privilege) ORDER BY a.attnum)::text[]
      FROM rels r CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS p(privilege)
     WHERE NOT has_table_privilege(current_user, r.oid, p.privilege)
       AND has_any_column_privilege(current_user, r.oid, p.privilege)
     ORDER BY 1, 3`)
  for (const row of rows) {
    const allowed = RUNTIME_PRIVILEGES[row.root]?.[row.privilege]
    if (allowed === true) continue
    if (row.columns === null) {
      problems.push(`runtime role ${role} holds ${row.privilege} on ${row.table_name}, which is not in its allow-list (RUNTIME_PRIVILEGES)`)
      continue
    }
    const extra = row.columns.filter((column) => allowed === undefined || !allowed.includes(column))
    if (extra.length > 0) {
      problems.push(`runtime role ${role} holds ${row.privilege} (${extra.join(', ')}) on ${row.table_name}, which is not in its allow-list (RUNTIME_PRIVILEGES)`)
    }
  }
}

async function checkViews (client: pg.ClientBase, problems: string[]): Promise<void> {
  // A view runs with its owner's rights unless security_invoker is set, which would sidestep RLS.
  const views = await client.query<{ name: string, relkind: string }>(`
    SELECT c.oid::regclass::text AS name, c.relkind::text AS relkind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('v', 'm') AND ${USER_SCHEMAS}
       AND has_table_privilege(current_user, c.oid, 'SELECT')
       AND (c.relkind = 'm' OR NOT coalesce(c.reloptions @> ARRAY['security_invoker=true'], false))`)
  for (const v of views.rows) {
    problems.push(v.relkind === 'm'
      ? `materialized view ${v.name} is readable by the runtime role; materialized views ignore row-level security`
      : `view ${v.name} is not security_invoker, so it would read with its owner's rights`)
  }
}

/**
 * SECURITY DEFINER functions run with their owner's rights, so each one the runtime role may call is
 * a door around RLS. Only the ones below were designed as such (each narrow, with a pinned
 * search_path); any other is refused.
 */
export const ALLOWED_DEFINER_FUNCTIONS = new Set(['user_tenant_ids'])

async function checkDefinerFunctions (client: pg.ClientBase, problems: string[]): Promise<void> {
  const { rows } = await client.query<{ name: string, proname: string, pinned: boolean }>(`
    SELECT p.oid::regprocedure::text AS name, p.proname,
           coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'), false) AS pinned
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.prosecdef AND ${USER_SCHEMAS}
       AND p.prorettype <> 'trigger'::regtype
       AND has_function_privilege(current_user, p.oid, 'EXECUTE')`)
  for (const fn of rows) {
    if (!ALLOWED_DEFINER_FUNCTIONS.has(fn.proname)) {
      problems.push(`runtime role may execute SECURITY DEFINER function ${fn.name}, which could read around row-level security`)
    } else if (!fn.pinned) {
      problems.push(`SECURITY DEFINER function ${fn.name} does not pin its search_path`)
    }
  }
}

/**
 * Distribution readiness: every primary key, unique constraint or index and foreign key of a tenant
 * table includes tenant_id, and every foreign key matches it with the referenced table's tenant. That
 * is what keeps uniqueness from acting as a cross-tenant existence oracle, keeps references inside a
 * tenant, and lets the schema be distributed by tenant_id (Citus). The tenants registry is the
 * exception by design (a reference table there).
 */
async function checkDistributionKeys (client: pg.ClientBase, problems: string[]): Promise<void> {
  const { rows } = await client.query<{ table_name: string, name: string, kind: string }>(`
    WITH tenant_tables AS (
      SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ${USER_SCHEMAS} AND c.relname <> 'tenants'
         AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
    ), tenant_attnum AS (
      SELECT a.attrelid, a.attnum FROM pg_attribute a JOIN tenant_tables t ON t.oid = a.attrelid WHERE a.attname = 'tenant_id'
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
  for (const r of rows) problems.push(`table ${r.table_name}: ${r.kind} ${r.name} does not include tenant_id (a global key is a cross-tenant existence oracle, and blocks distribution by tenant)`)

  // A foreign key that includes tenant_id must also match it with the referenced table's tenant_id
  // (tenants.id for the registry), position by position: (tenant_id, customer_id) REFERENCES
  // customers (id, tenant_id) includes tenant_id yet lets a row point at another tenant's customer.
  // Only the declared constraints (conparentid = 0), not the copies PostgreSQL keeps per partition.
  const { rows: crossed } = await client.query<{ table_name: string, name: string, referenced: string, column_name: string }>(`
    WITH tenant_tables AS (
      SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ${USER_SCHEMAS} AND c.relname <> 'tenants'
         AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
    )
    SELECT k.conrelid::regclass::text AS table_name, k.conname AS name, k.confrelid::regclass::text AS referenced, ra.attname AS column_name
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
    problems.push(`table ${r.table_name}: foreign key ${r.name} matches tenant_id with ${r.referenced}.${r.column_name}, not with the referenced tenant (a reference could point into another tenant)`)
  }
}

async function checkTenantFunction (client: pg.ClientBase, tables: TableRow[], problems: string[]): Promise<void> {
  const fn = await client.query<{ provolatile: string, prosecdef: boolean, runtime_owns: boolean }>(`
    SELECT p.provolatile::text AS provolatile, p.prosecdef, pg_has_role(current_user, p.proowner, 'MEMBER') AS runtime_owns
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = 'public' AND p.proname = 'current_tenant_id' AND p.pronargs = 0`)
  const row = fn.rows[0]
  if (row === undefined) {
    problems.push('function current_tenant_id() is missing: run the migrations')
    return
  }
  if (row.runtime_owns) problems.push('function current_tenant_id() is owned by the runtime role, which could redefine it')
  if (row.prosecdef) problems.push('function current_tenant_id() must not be SECURITY DEFINER')

  // Behaviour: with no tenant bound (unset, then the '' PostgreSQL leaves behind) the function is
  // NULL, never an error, and no tenant table shows a single row.
  await client.query('BEGIN READ ONLY')
  try {
    const unset = await client.query<{ t: string | null }>('SELECT current_tenant_id() AS t')
    if (unset.rows[0]?.t !== null) problems.push('current_tenant_id() is not NULL when no tenant is bound')
    await client.query("SELECT set_config('app.current_tenant_id', '', true)")
    const empty = await client.query<{ t: string | null }>('SELECT current_tenant_id() AS t')
    if (empty.rows[0]?.t !== null) problems.push("current_tenant_id() is not NULL when the setting is ''")
    for (const table of tables) {
      if (table.relispartition || !table.can_select) continue
      const visible = await client.query(`SELECT 1 FROM ${table.table_name} LIMIT 1`)
      if (visible.rowCount !== 0) problems.push(`table ${table.table_name} shows rows when no tenant is bound`)
    }
  } catch (error) {
    problems.push(`current_tenant_id() is not fail-closed: with an empty setting it raised "${(error as Error).message}"`)
  } finally {
    await client.query('ROLLBACK').catch(() => {})
  }
}

export async function runSafetyChecks (runtime: pg.Pool | pg.ClientBase): Promise<SafetyReport> {
  const client = runtime instanceof pg.Pool ? await runtime.connect() : runtime
  const problems: string[] = []
  try {
    const role = await checkRole(client, problems)
    const { rows: tables } = await client.query<TableRow>(TABLES_SQL)
    const { rows: policies } = await client.query<PolicyRow>(POLICIES_SQL)
    if (tables.length === 0) problems.push('no tenant tables found: run the migrations')
    for (const table of tables) {
      const name = table.table_name
      if (table.runtime_owns) problems.push(`runtime role ${role} owns table ${name} (owners can disable row-level security)`)
      if (!table.relrowsecurity) problems.push(`table ${name} does not ENABLE ROW LEVEL SECURITY`)
      if (!table.relforcerowsecurity) problems.push(`table ${name} does not FORCE ROW LEVEL SECURITY`)
      if (table.can_truncate) problems.push(`runtime role ${role} has TRUNCATE on ${name} (TRUNCATE ignores row-level security)`)
      if (table.can_reference) problems.push(`runtime role ${role} has REFERENCES on ${name} (foreign key checks ignore row-level security)`)
      if (table.can_trigger) problems.push(`runtime role ${role} has TRIGGER on ${name}`)
      checkPolicies(table, policies.filter((p) => p.table_name === name), problems)
    }
    await checkPrivileges(client, role, problems)
    await checkViews(client, problems)
    await checkDefinerFunctions(client, problems)
    await checkDistributionKeys(client, problems)
    await checkTenantFunction(client, tables, problems)
    return { ok: problems.length === 0, role, tenantTables: tables.length, problems }
  } finally {
    if (runtime instanceof pg.Pool) (client as pg.PoolClient).release()
  }
}

export class UnsafeDatabaseError extends Error {
  override name = 'UnsafeDatabaseError'
  constructor (readonly problems: string[]) {
    super(`refusing to start: ${problems.join('; ')}`)
  }
}
