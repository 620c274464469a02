-- Users from an identity provider and the tenants they belong to.
CREATE TABLE memberships (
  tenant_id  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id         uuid NOT NULL,
  user_id    text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
  role       text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id),
  CONSTRAINT memberships_user_key UNIQUE (tenant_id, user_id)
);
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, DELETE ON memberships TO app;
GRANT UPDATE (role) ON memberships TO app;

-- A JWT that names no tenant (no x-tenant-id, no tid claim) belongs to the user's only tenant, if
-- the user has exactly one. Finding that out is the one read that crosses tenants, so it is this
-- narrow function and nothing else: SECURITY DEFINER, owned by the owner (whose SELECT-only
-- directory policy below sees every membership), a pinned search_path, and it returns at most two
-- tenant ids for one user id the caller already holds — enough to tell "one" from "several".
CREATE INDEX memberships_user_id_idx ON memberships (user_id);
CREATE POLICY membership_directory ON memberships FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION user_tenant_ids(p_user_id text) RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT m.tenant_id FROM public.memberships m WHERE m.user_id = p_user_id ORDER BY m.tenant_id LIMIT 2 $$;
REVOKE ALL ON FUNCTION user_tenant_ids(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION user_tenant_ids(text) TO app;
