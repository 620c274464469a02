import type pg from 'pg'

/** Every schema but PostgreSQL's own: where the runtime role's objects and grants are looked for. */
export const USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"

type TablePrivilege = 'SELECT' | 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE' | 'REFERENCES' | 'TRIGGER'
type Allowed = Partial<Record<TablePrivilege, true | readonly string[]>>

/**
 * Every table privilege the runtime role may hold: `true` for the whole table, or the columns. Any
 * other privilege it holds (directly, through PUBLIC or through a role it belongs to) is refused, so
 * a grant nobody uses cannot creep in: a migration that grants more must add it here. A partition
 * may hold what its partitioned table may. Kept to what the runtime code uses (request.db, tenant
 * transactions, the key-usage flush); the migrations grant exactly this (sql/0010_least_privilege.sql).
 */
export const RUNTIME_PRIVILEGES: Readonly<Record<string, Allowed>> = {
  tenants: { SELECT: true },
  api_keys: { SELECT: true, INSERT: true, UPDATE: ['last_used_at', 'revoked_at'] },
  // UPDATE (role) is never written: it is what SELECT ... FOR UPDATE (the owners' row locks) requires.
  memberships: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['role', 'accepted_at'] },
  customers: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['name', 'email', 'external_ref', 'updated_at'] },
  invoices: {
    SELECT: true,
    INSERT: ['tenant_id', 'id', 'customer_id', 'number', 'status', 'currency', 'amount_cents', 'due_date', 'memo',
      'created_at', 'updated_at', 'finalized_at', 'paid_at', 'voided_at'],
    UPDATE: ['customer_id', 'number', 'status', 'currency', 'amount_cents', 'due_date', 'memo', 'updated_at',
      'finalized_at', 'paid_at', 'voided_at'],
  },
  invoice_lines: {
    SELECT: true,
    DELETE: true,
    INSERT: ['tenant_id', 'invoice_id', 'position', 'description', 'quantity', 'unit_amount_cents', 'amount_cents'],
  },
  invoice_counters: { SELECT: true, INSERT: true, UPDATE: ['last_number'] },
  idempotency_keys: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['status', 'response'] },
  // Not occurred_at nor the chain columns: the database sets those (sql/0011_audit_hardening.sql).
  audit_events: {
    SELECT: true,
    INSERT: ['tenant_id', 'id', 'actor_type', 'actor_id', 'action', 'resource_type', 'resource_id', 'request_id',
      'data'],
  },
  audit_heads: { SELECT: true },
  // The tenant's verification records how far it got; never created_at (sql/0015_audit_checkpoints.sql).
  audit_checkpoints: { SELECT: true, INSERT: ['tenant_id', 'seq', 'hash'] },
  // Not shard nor created_at: the database decides them. Retention deletes as the owner (sql/0018_events.sql).
  events: {
    SELECT: true,
    INSERT: ['tenant_id', 'id', 'type', 'resource_type', 'resource_id', 'data', 'request_id', 'actor_type', 'actor_id'],
  },
  // Webhooks and self-service exports (sql/0019_webhooks_and_jobs.sql): never created_at.
  webhook_endpoints: {
    SELECT: true,
    INSERT: true,
    DELETE: true,
    UPDATE: ['url', 'description', 'event_types', 'status', 'disabled_reason', 'secret_sealed',
      'previous_secret_sealed', 'previous_secret_expires_at', 'failing_since', 'updated_at'],
  },
  webhook_deliveries: {
    SELECT: true, INSERT: true, UPDATE: ['status', 'attempts', 'next_attempt_at', 'last_attempt_at'],
  },
  webhook_attempts: { SELECT: true, INSERT: true },
  tenant_exports: {
    SELECT: true,
    INSERT: true,
    UPDATE: ['status', 'rows_total', 'rows_done', 'bytes', 'error', 'started_at', 'finished_at', 'expires_at'],
  },
  tenant_export_chunks: { SELECT: true, INSERT: true, DELETE: true },
  // Limits and usage (sql/0020_limits_and_usage.sql): read only. Usage is written by the database's own
  // triggers, and request counts through usage_record_requests().
  plans: { SELECT: true },
  tenant_limits: { SELECT: true },
  usage_periods: { SELECT: true },
  usage_days: { SELECT: true },
  usage_route_days: { SELECT: true },
  usage_notices: { SELECT: true },
  // The worker's liveness (src/jobs/worker-lease.ts), and what it needs of the queue's tables to take,
  // finish, fail and hand back jobs; never INSERT on jobs: it enqueues through enqueue_tenant_job().
  worker_heartbeats: { SELECT: true, INSERT: true, DELETE: true, UPDATE: ['seen_at'] },
  'graphile_worker.migrations': { SELECT: true },
  'graphile_worker._private_jobs': { SELECT: true, UPDATE: true, DELETE: true },
  'graphile_worker._private_job_queues': { SELECT: true, UPDATE: true, DELETE: true },
  'graphile_worker._private_tasks': { SELECT: true, INSERT: true },
  'graphile_worker._private_known_crontabs': { SELECT: true, INSERT: true, UPDATE: true },
}

export async function checkPrivileges (client: pg.ClientBase, role: string, problems: string[]): Promise<void> {
  // Whole-table privileges, then column privileges held without the whole-table one. has_*_privilege
  // counts grants to the role, to PUBLIC and to every role it inherits from.
  type Held = { table_name: string, root: string, privilege: TablePrivilege, columns: string[] | null }
  const { rows } = await client.query<Held>(`
    WITH rels AS (
      SELECT c.oid, c.oid::regclass::text AS table_name,
             coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS root
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ${USER_SCHEMAS}
    )
    SELECT r.table_name, r.root, p.privilege, NULL::text[] AS columns
      FROM rels r CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'])
           AS p(privilege)
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
  const refused = (what: string, table: string): void => {
    problems.push(`runtime role ${role} holds ${what} on ${table}, which is not in its allow-list (RUNTIME_PRIVILEGES)`)
  }
  for (const row of rows) {
    const allowed = RUNTIME_PRIVILEGES[row.root]?.[row.privilege]
    if (allowed === true) continue
    if (row.columns === null) {
      refused(row.privilege, row.table_name)
      continue
    }
    const extra = row.columns.filter((column) => allowed === undefined || !allowed.includes(column))
    if (extra.length > 0) refused(`${row.privilege} (${extra.join(', ')})`, row.table_name)
  }
}

/**
 * SECURITY DEFINER functions run with their owner's rights, so each one the runtime role may call is
 * a door around RLS. Only the ones below were designed as such (each narrow, with a pinned
 * search_path); any other is refused.
 */
export const ALLOWED_DEFINER_FUNCTIONS = new Set([
  'user_tenant_ids',
  // Enqueues for the bound tenant only, naming a row of that tenant (sql/0019_webhooks_and_jobs.sql).
  'enqueue_tenant_job',
  // Adds request counts for the bound tenant only, to request counters only (sql/0020_limits_and_usage.sql).
  'usage_record_requests',
])

export async function checkDefinerFunctions (client: pg.ClientBase, problems: string[]): Promise<void> {
  const { rows } = await client.query<{ name: string, proname: string, pinned: boolean }>(`
    SELECT p.oid::regprocedure::text AS name, p.proname,
           coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'), false) AS pinned
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.prosecdef AND ${USER_SCHEMAS}
       AND p.prorettype <> 'trigger'::regtype
       AND has_function_privilege(current_user, p.oid, 'EXECUTE')`)
  for (const fn of rows) {
    if (!ALLOWED_DEFINER_FUNCTIONS.has(fn.proname)) {
      problems.push(`runtime role may execute SECURITY DEFINER function ${fn.name}, ` +
        'which could read around row-level security')
    } else if (!fn.pinned) {
      problems.push(`SECURITY DEFINER function ${fn.name} does not pin its search_path`)
    }
  }
}
