-- Foundation: the tenant binding, the tenant registry and API keys.
--
-- Runs as the owner role (DATABASE_URL). The runtime role `app` is created beforehand by
-- `npm run db:setup` (or the embedded bootstrap) and only ever receives DML grants here.

-- Nobody but the owner creates objects in this schema.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO app;

-- The tenant bound to the current transaction, or NULL.
-- After a transaction-local set_config ends, PostgreSQL leaves the setting as '' rather than
-- removing it, and ''::uuid would raise: nullif makes "no tenant" mean "no rows", never an error.
-- A LANGUAGE sql STABLE function is inlined into the policy, so `tenant_id = current_tenant_id()`
-- is an ordinary index condition on the leading tenant_id column.
CREATE FUNCTION current_tenant_id() RETURNS uuid
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid $$;

-- The registry of tenants. Its id *is* the tenant id, so its policy compares id.
CREATE TABLE tenants (
  id         uuid PRIMARY KEY,
  name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  slug       text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Global on purpose: slugs are chosen by operators, never by tenants, so this is no oracle.
  CONSTRAINT tenants_slug_key UNIQUE (slug)
);
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
  USING (id = current_tenant_id())
  WITH CHECK (id = current_tenant_id());
-- The operator API (owner connection) lists every tenant; the runtime role never matches this policy.
CREATE POLICY operator_registry ON tenants FOR SELECT TO CURRENT_USER USING (true);
GRANT SELECT ON tenants TO app;

-- API keys: the secret is never stored, only its SHA-256. The key itself carries its tenant id
-- and key id, so a key is resolved under its own tenant's RLS binding, never across tenants.
CREATE TABLE api_keys (
  tenant_id    uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id           uuid NOT NULL,
  name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  prefix       text NOT NULL,
  secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
  scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'admin']),
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz,
  PRIMARY KEY (tenant_id, id)
);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, DELETE ON api_keys TO app;
GRANT UPDATE (name, last_used_at, revoked_at) ON api_keys TO app;
