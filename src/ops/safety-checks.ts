import pg from 'pg'
import { logFailure, type FailureLog } from '../log-failure.ts'
import { checkDistributionKeys } from './distribution-keys.ts'
import { checkDefinerFunctions, checkPrivileges, USER_SCHEMAS } from './runtime-privileges.ts'

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
  const mismatch = (p: PolicyRow, clause: string, actual: string | null): void => {
    const has = `${clause} ${actual ?? '(none)'}`
    problems.push(`table ${table.table_name}: policy ${p.polname} has ${has}, expected ${expected}`)
  }
  for (const p of permissive) {
    // polcmd: r SELECT, a INSERT, w UPDATE, d DELETE, * ALL. INSERT has no USING; SELECT and DELETE
    // have no WITH CHECK; ALL and UPDATE fall back to USING when WITH CHECK is absent.
    const checksRows = p.polcmd !== 'a'
    const checksWrites = p.polcmd === 'a' || p.polcmd === 'w' || p.polcmd === '*'
    if (checksRows && p.using_expr !== expected) mismatch(p, 'USING', p.using_expr)
    const effectiveCheck = p.check_expr ?? (p.polcmd === 'a' ? null : p.using_expr)
    if (checksWrites && effectiveCheck !== expected) mismatch(p, 'WITH CHECK', effectiveCheck)
  }
}

async function checkRole (client: pg.ClientBase, problems: string[]): Promise<string> {
  interface Role {
    role: string
    rolsuper: boolean
    rolbypassrls: boolean
    rolcreaterole: boolean
    rolcreatedb: boolean
    owns_database: boolean
  }
  const { rows: [role] } = await client.query<Role>(`
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
  if (role.owns_database) {
    problems.push(`runtime role ${name} owns the database: ` +
      'use the owner role for DATABASE_URL and a separate runtime role')
  }

  // Every role the runtime role is a member of, directly or through other roles (pg_auth_members,
  // followed recursively; a member can SET ROLE to it whether or not it inherits), with the chain.
  const elevated = await client.query<{ rolname: string, via: string[], attributes: string[] }>(`
    WITH RECURSIVE granted (roleid, path) AS (
      SELECT m.roleid, ARRAY[]::oid[] FROM pg_auth_members m
       WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      UNION ALL
      SELECT m.roleid, g.path || g.roleid FROM pg_auth_members m JOIN granted g ON m.member = g.roleid
       WHERE NOT m.roleid = ANY (g.path || g.roleid)
    )
    SELECT DISTINCT ON (r.rolname) r.rolname,
           array(SELECT v.rolname FROM unnest(g.path) WITH ORDINALITY AS u(oid, n)
                   JOIN pg_roles v ON v.oid = u.oid ORDER BY u.n)::text[] AS via,
           array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END,
                              CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
                              CASE WHEN r.rolcreatedb THEN 'CREATEDB' END], NULL) AS attributes
      FROM granted g JOIN pg_roles r ON r.oid = g.roleid
     WHERE r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb
     ORDER BY r.rolname, cardinality(g.path)`)
  for (const r of elevated.rows) {
    const via = r.via.length === 0 ? '' : ` (through ${r.via.join(' → ')})`
    problems.push(`runtime role ${name} is a member of ${r.rolname}${via}, which has ${r.attributes.join(', ')}: ` +
      'it can act with that role\'s rights')
  }

  const schemas = await client.query<{ nspname: string }>(`
    SELECT n.nspname FROM pg_namespace n
     WHERE ${USER_SCHEMAS} AND has_schema_privilege(current_user, n.oid, 'CREATE')`)
  for (const s of schemas.rows) problems.push(`runtime role ${name} may create objects in schema ${s.nspname}`)
  return name
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

async function checkTenantFunction (
  client: pg.ClientBase, tables: TableRow[], problems: string[], log: FailureLog | undefined
): Promise<void> {
  const fn = await client.query<{ provolatile: string, prosecdef: boolean, runtime_owns: boolean }>(`
    SELECT p.provolatile::text AS provolatile, p.prosecdef,
           pg_has_role(current_user, p.proowner, 'MEMBER') AS runtime_owns
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = 'public' AND p.proname = 'current_tenant_id' AND p.pronargs = 0`)
  const row = fn.rows[0]
  if (row === undefined) {
    problems.push('function current_tenant_id() is missing: run the migrations')
    return
  }
  if (row.runtime_owns) {
    problems.push('function current_tenant_id() is owned by the runtime role, which could redefine it')
  }
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
    const raised = (error as Error).message
    problems.push(`current_tenant_id() is not fail-closed: with an empty setting it raised "${raised}"`)
  } finally {
    // READ ONLY: nothing to undo, so a failed rollback is logged, not a finding; the connection's next
    // statement fails as well.
    await client.query('ROLLBACK').catch(logFailure(log, 'rolling back the fail-closed check'))
  }
}

export async function runSafetyChecks (runtime: pg.Pool | pg.ClientBase, log?: FailureLog): Promise<SafetyReport> {
  const client = runtime instanceof pg.Pool ? await runtime.connect() : runtime
  const problems: string[] = []
  try {
    const role = await checkRole(client, problems)
    const { rows: tables } = await client.query<TableRow>(TABLES_SQL)
    const { rows: policies } = await client.query<PolicyRow>(POLICIES_SQL)
    if (tables.length === 0) problems.push('no tenant tables found: run the migrations')
    for (const table of tables) {
      const name = table.table_name
      const runtime = `runtime role ${role}`
      if (table.runtime_owns) problems.push(`${runtime} owns table ${name} (owners can disable row-level security)`)
      if (!table.relrowsecurity) problems.push(`table ${name} does not ENABLE ROW LEVEL SECURITY`)
      if (!table.relforcerowsecurity) problems.push(`table ${name} does not FORCE ROW LEVEL SECURITY`)
      if (table.can_truncate) problems.push(`${runtime} has TRUNCATE on ${name} (TRUNCATE ignores row-level security)`)
      if (table.can_reference) {
        problems.push(`${runtime} has REFERENCES on ${name} (foreign key checks ignore row-level security)`)
      }
      if (table.can_trigger) problems.push(`${runtime} has TRIGGER on ${name}`)
      checkPolicies(table, policies.filter((p) => p.table_name === name), problems)
    }
    await checkPrivileges(client, role, problems)
    await checkViews(client, problems)
    await checkDefinerFunctions(client, problems)
    await checkDistributionKeys(client, problems)
    await checkTenantFunction(client, tables, problems, log)
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
