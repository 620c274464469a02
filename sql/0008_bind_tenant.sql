-- bind_tenant(): the first statement of every tenant request, doing in one call and in a fixed order
--   1. bind the tenant (transaction-local set_config: it ends with the transaction),
--   2. take the tenant's lock in shared mode until the transaction ends (placement moves and erasure
--      take it exclusively),
--   3. read, after the lock is granted, the tenant's current shard and status and — when asked — the
--      presented API key (if live: its scopes and secret hash) or the user's membership role.
-- Being VOLATILE plpgsql, step 3 takes a fresh snapshot after step 2, so a request that waited for a
-- placement move sees where the tenant lives now, and a key revoked a moment ago is seen revoked. It
-- runs with the caller's rights: step 3 reads under the binding of step 1, through RLS, and its plans
-- are cached for the session.
CREATE FUNCTION bind_tenant(
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
    SELECT m.role INTO member_role FROM public.memberships m WHERE m.tenant_id = t AND m.user_id = member_id;
  END IF;
END $$;
