-- A membership is pending until its user accepts it with their own credential.
--
-- Before, any tenant's admin could add any user id as a member, and from then on that user's tokens
-- that name no tenant (no x-tenant-id, no tid claim) failed with "you belong to several tenants":
-- one tenant could change how a user's credentials resolve in another. Now adding someone records
-- an invitation (accepted_at NULL) that grants nothing and is invisible to user_tenant_ids(), until
-- the user accepts it (POST /v1/membership/accept with their own token naming the tenant).

-- Memberships that exist already were granted under the old rule: they count as accepted (now() is
-- evaluated once, for every existing row); new rows are pending.
ALTER TABLE memberships ADD COLUMN accepted_at timestamptz DEFAULT now();
ALTER TABLE memberships ALTER COLUMN accepted_at DROP DEFAULT;

-- The runtime role sets accepted_at (the accepting request) and nothing else new.
GRANT UPDATE (accepted_at) ON memberships TO app;

-- The user's only tenant counts accepted memberships only: an invitation changes nothing.
CREATE OR REPLACE FUNCTION user_tenant_ids(p_user_id text) RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT m.tenant_id FROM public.memberships m
         WHERE m.user_id = p_user_id AND m.accepted_at IS NOT NULL
         ORDER BY m.tenant_id LIMIT 2 $$;

-- As in 0008, with one change: a pending membership answers member_role = 'pending' (not a role,
-- so it carries no scopes); the pipeline lets it reach the acceptance route only.
CREATE OR REPLACE FUNCTION bind_tenant(
  t uuid, key_id uuid, member_id text,
  OUT shard integer, OUT status text, OUT key_scopes text[], OUT key_secret_hash bytea, OUT member_role text)
  LANGUAGE plpgsql VOLATILE
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  PERFORM set_config('app.current_tenant_id', t::text, true);
  PERFORM pg_advisory_xact_lock_shared(hashtextextended(t::text, 7301));
  SELECT tn.shard, tn.status INTO shard, status FROM public.tenants tn WHERE tn.id = t;
  IF key_id IS NOT NULL THEN
    SELECT k.scopes, k.secret_hash INTO key_scopes, key_secret_hash
      FROM public.api_keys k WHERE k.tenant_id = t AND k.id = key_id AND k.revoked_at IS NULL;
  END IF;
  IF member_id IS NOT NULL THEN
    SELECT CASE WHEN m.accepted_at IS NULL THEN 'pending' ELSE m.role END INTO member_role
      FROM public.memberships m WHERE m.tenant_id = t AND m.user_id = member_id;
  END IF;
END $$;
