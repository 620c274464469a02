-- bind_tenant answers the tenant's limits only when asked (want_limits): the server asks when it does not
-- hold them (a tenant's first request on an instance, or its first after a change was notified), instead of
-- every request paying two more index reads for an answer it already has.
DROP FUNCTION bind_tenant(uuid, uuid, text);
CREATE FUNCTION bind_tenant(
  t uuid, key_id uuid, member_id text, want_limits boolean DEFAULT false,
  OUT shard integer, OUT status text, OUT key_scopes text[], OUT key_secret_hash bytea, OUT member_role text,
  OUT limits jsonb)
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
  IF want_limits THEN
    SELECT jsonb_build_object('plan', p.limits, 'overrides', l.overrides) INTO limits
      FROM public.tenant_limits l LEFT JOIN public.plans p ON p.name = l.plan WHERE l.tenant_id = t;
    -- Always an object when asked (none set: both null), so that "not asked" (NULL) is told apart.
    limits := coalesce(limits, jsonb_build_object('plan', NULL, 'overrides', NULL));
  END IF;
END $$;
