-- Quotas and metering (sql/0020) no longer depend on anything the runtime role sets itself.
--
-- Who is metered is decided by the session's role, not by a row's created_at or by whether a tenant is
-- bound: the runtime role's work (requests and jobs) is always judged and counted, and must be bound to
-- the row's tenant and carry the default quotas (app.default_limits) at COMMIT, or the write is refused;
-- the owner's (the operator's actions, imports, placement moves) and a superuser's are neither judged nor
-- counted: an operator may issue a replacement key over a tenant's quota, and copied rows were counted
-- where they were made. A key revoked and made live again is judged like a new one. A notice fires once a
-- counter has reached its mark, however many rows one write added. Request counts are accepted for today
-- and yesterday only, and not for a period whose usage.period_closed was sent.

-- Whether the work of this session is judged and counted: the runtime role's, not the table owner's nor a
-- superuser's (SECURITY DEFINER leaves session_user as the login). For the runtime role, refuses a write
-- made without the binding of the row's tenant or without the default quotas, which every request and job
-- sets: a write that got there without them is a bug, and must not go unjudged.
CREATE FUNCTION usage_judged(p_tenant uuid, p_table regclass) RETURNS boolean
  LANGUAGE plpgsql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF pg_has_role(session_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = p_table), 'USAGE') THEN
    RETURN false;
  END IF;
  IF public.current_tenant_id() IS DISTINCT FROM p_tenant THEN
    RAISE EXCEPTION 'a metered write of tenant % committed without its binding', p_tenant USING ERRCODE = '42501';
  END IF;
  IF coalesce(current_setting('app.default_limits', true), '') = '' THEN
    RAISE EXCEPTION 'a metered write committed without the default quotas (app.default_limits)'
      USING ERRCODE = '42501';
  END IF;
  RETURN true;
END $$;
REVOKE ALL ON FUNCTION usage_judged(uuid, regclass) FROM PUBLIC;

-- Once a counter has reached a mark (whatever it was before: one write may add several rows); the
-- notice's key keeps it to once per tenant, quota, mark and period.
CREATE OR REPLACE FUNCTION usage_notify_thresholds(p_tenant uuid, p_metric text, p_before bigint, p_after bigint,
                                                   p_limit bigint)
  RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  percent integer;
  event uuid;
  p date := public.usage_period();
BEGIN
  IF p_limit IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;
  FOREACH percent IN ARRAY ARRAY[80, 100] LOOP
    CONTINUE WHEN p_after < ceil(p_limit * percent / 100.0);
    event := public.new_time_ordered_id();
    INSERT INTO public.usage_notices (tenant_id, period, metric, notice, event_id)
      VALUES (p_tenant, p, p_metric, 'threshold_' || percent, event)
      ON CONFLICT DO NOTHING;
    CONTINUE WHEN NOT FOUND;
    INSERT INTO public.events (tenant_id, id, shard, type, resource_type, resource_id, data, actor_type, actor_id)
      VALUES (p_tenant, event, (SELECT t.shard FROM public.tenants t WHERE t.id = p_tenant),
              'usage.threshold_reached', 'usage', to_char(p, 'YYYY-MM'),
              jsonb_build_object('period', to_char(p, 'YYYY-MM'), 'quota', p_metric, 'threshold_percent', percent,
                                 'limit', p_limit, 'used', p_after, 'resets_at', public.usage_resets_at(p_metric)),
              'system', 'rowfence');
  END LOOP;
END $$;

-- As in 0020, the caller (a trigger) having decided that the work is metered (usage_judged).
CREATE OR REPLACE FUNCTION usage_add(p_tenant uuid, p_metric text, p_amount bigint, p_enforce boolean) RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  lim bigint := public.tenant_limit(p_tenant, p_metric);
  total bigint;
  used bigint;
BEGIN
  IF p_amount <= 0 THEN
    RETURN;
  END IF;
  INSERT INTO public.usage_periods AS u (tenant_id, period, metric, amount)
    VALUES (p_tenant, public.usage_period(), p_metric, p_amount)
    ON CONFLICT (tenant_id, period, metric) DO UPDATE
      SET amount = u.amount + excluded.amount, updated_at = now()
      WHERE NOT p_enforce OR lim IS NULL OR u.amount + excluded.amount <= lim
    RETURNING amount INTO total;
  IF total IS NULL OR (p_enforce AND lim IS NOT NULL AND total > lim) THEN
    SELECT u.amount INTO used FROM public.usage_periods u
     WHERE u.tenant_id = p_tenant AND u.period = public.usage_period() AND u.metric = p_metric;
    PERFORM public.usage_refuse(p_metric, lim, coalesce(used, 0) - CASE WHEN total IS NULL THEN 0 ELSE p_amount END);
  END IF;
  INSERT INTO public.usage_days AS u (tenant_id, day, metric, amount)
    VALUES (p_tenant, public.usage_day(), p_metric, p_amount)
    ON CONFLICT (tenant_id, day, metric) DO UPDATE SET amount = u.amount + excluded.amount;
  PERFORM public.usage_notify_thresholds(p_tenant, p_metric, total - p_amount, total, lim);
END $$;

CREATE OR REPLACE FUNCTION usage_meter_invoices() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF NOT public.usage_judged(NEW.tenant_id, TG_RELID) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    PERFORM public.usage_add(NEW.tenant_id, 'invoices_created', 1, true);
  ELSIF OLD.status = 'draft' AND NEW.status <> 'draft' THEN
    PERFORM public.usage_add(NEW.tenant_id, 'invoices_finalized', 1, false);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION usage_meter_deliveries() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF public.usage_judged(NEW.tenant_id, TG_RELID) THEN
    PERFORM public.usage_add(NEW.tenant_id, 'events_delivered', 1, false);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION usage_meter_exports() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF public.usage_judged(NEW.tenant_id, TG_RELID) THEN
    PERFORM public.usage_add(NEW.tenant_id, 'export_bytes', NEW.bytes, false);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION usage_check_objects() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  quota text := TG_ARGV[0];
  lim bigint;
  n bigint;
BEGIN
  IF NOT public.usage_judged(NEW.tenant_id, TG_RELID) THEN
    RETURN NULL;
  END IF;
  lim := public.tenant_limit(NEW.tenant_id, quota);
  IF lim IS NULL THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended('rowfence_quota:' || quota || ':' || NEW.tenant_id, 0));
  IF quota = 'customers' THEN
    SELECT count(*) INTO n FROM public.customers WHERE tenant_id = NEW.tenant_id;
  ELSIF quota = 'api_keys' THEN
    SELECT count(*) INTO n FROM public.api_keys WHERE tenant_id = NEW.tenant_id AND revoked_at IS NULL;
  ELSIF quota = 'members' THEN
    SELECT count(*) INTO n FROM public.memberships WHERE tenant_id = NEW.tenant_id;
  ELSIF quota = 'webhook_endpoints' THEN
    SELECT count(*) INTO n FROM public.webhook_endpoints WHERE tenant_id = NEW.tenant_id;
  ELSE
    RAISE EXCEPTION 'usage_check_objects: unknown quota %', quota USING ERRCODE = '22023';
  END IF;
  IF n > lim THEN
    PERFORM public.usage_refuse(quota, lim, n - 1);
  END IF;
  PERFORM public.usage_notify_thresholds(NEW.tenant_id, quota, n - 1, n, lim);
  RETURN NULL;
END $$;
-- A revoked key made live again counts like a new one.
CREATE CONSTRAINT TRIGGER usage_quota_api_keys_revived AFTER UPDATE OF revoked_at ON api_keys
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NULL) EXECUTE FUNCTION usage_check_objects('api_keys');

CREATE OR REPLACE FUNCTION usage_record_requests(p_day date, p_routes text[], p_requests bigint[], p_metrics text[],
                                                 p_amounts bigint[])
  RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  t uuid := public.current_tenant_id();
  p date := date_trunc('month', p_day)::date;
BEGIN
  IF t IS NULL THEN
    RAISE EXCEPTION 'usage_record_requests: no tenant is bound' USING ERRCODE = '42501';
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(p_metrics) m
              WHERE m NOT IN ('requests', 'refusals_rate', 'refusals_concurrency', 'refusals_quota')) THEN
    RAISE EXCEPTION 'usage_record_requests: not a request counter' USING ERRCODE = '22023';
  END IF;
  -- Counts of today or yesterday (a flush that spans midnight, or retried after a short outage) only,
  -- and never into a period whose totals were already sent.
  IF p_day NOT BETWEEN public.usage_day() - 1 AND public.usage_day() THEN
    RAISE EXCEPTION 'usage_record_requests: % is not today or yesterday', p_day USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM public.usage_notices n
              WHERE n.tenant_id = t AND n.period = p AND n.notice = 'period_closed') THEN
    RAISE EXCEPTION 'usage_record_requests: period % is closed', to_char(p, 'YYYY-MM') USING ERRCODE = '22023';
  END IF;
  INSERT INTO public.usage_route_days AS u (tenant_id, day, route, requests)
    SELECT t, p_day, r.route, sum(r.n) FROM unnest(p_routes, p_requests) AS r (route, n) GROUP BY r.route
    ON CONFLICT (tenant_id, day, route) DO UPDATE SET requests = u.requests + excluded.requests;
  INSERT INTO public.usage_days AS u (tenant_id, day, metric, amount)
    SELECT t, p_day, m.metric, sum(m.n) FROM unnest(p_metrics, p_amounts) AS m (metric, n) GROUP BY m.metric
    ON CONFLICT (tenant_id, day, metric) DO UPDATE SET amount = u.amount + excluded.amount;
  INSERT INTO public.usage_periods AS u (tenant_id, period, metric, amount)
    SELECT t, p, m.metric, sum(m.n) FROM unnest(p_metrics, p_amounts) AS m (metric, n) GROUP BY m.metric
    ON CONFLICT (tenant_id, period, metric) DO UPDATE SET amount = u.amount + excluded.amount, updated_at = now();
END $$;
