-- Limits and usage: the plans an operator assigns, each tenant's plan and overrides, and what each
-- tenant used, per day and per billing period (a UTC calendar month).
--
-- Quotas are judged here, in the write's own transaction, by triggers that run at COMMIT (deferred
-- constraint triggers): the counter row (or, for live objects, the tenant's lock for that quota) is
-- held from the check to the end of the commit only, so concurrent writes of one tenant wait for each
-- other a moment, and exactly as many are admitted as the quota leaves room for. A write that fails or
-- rolls back counts nothing: its counts were in its transaction. Billable counts are recorded by the
-- same triggers, so no code path can do the work and skip the count, or count it twice.

-- A named set of limits. `limits` maps a limit name to a whole number or null (unlimited); a name it
-- does not hold falls to the server's configured default. The API checks the names and values.
CREATE TABLE plans (
  name       text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  limits     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON plans TO app;

-- A tenant's plan (none: the defaults) and its own overrides, which win over the plan. Written by the
-- operator only; the runtime role reads its own tenant's row. `plan` names a plan without a foreign key
-- (keys stay within a tenant: src/ops/distribution-keys.ts): the operator API checks the name under
-- the plan's row lock, and a plan is deleted only once no tenant is on it (src/limits/plans.ts).
CREATE TABLE tenant_limits (
  tenant_id  uuid PRIMARY KEY DEFAULT current_tenant_id() REFERENCES tenants (id),
  plan       text CHECK (plan ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  overrides  jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(overrides) = 'object'),
  updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_limits
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT ON tenant_limits TO app;
-- The operator lists which tenants are on a plan (the owner sees every row of this table; exports and
-- erasure name their tenant in every statement).
CREATE POLICY operator_plans ON tenant_limits FOR SELECT TO CURRENT_USER USING (true);

-- Usage per billing period: `period` is the month's first day. Counters of work done (invoices
-- created and finalized, events delivered, export bytes) and of requests (and refusals), which the
-- server writes in batches.
CREATE TABLE usage_periods (
  tenant_id  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  period     date NOT NULL CHECK (extract(day FROM period) = 1),
  metric     text NOT NULL CHECK (metric ~ '^[a-z_]{1,40}$'),
  amount     bigint NOT NULL CHECK (amount >= 0),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, period, metric)
);
-- The same counters per UTC day.
CREATE TABLE usage_days (
  tenant_id  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  day        date NOT NULL,
  metric     text NOT NULL CHECK (metric ~ '^[a-z_]{1,40}$'),
  amount     bigint NOT NULL CHECK (amount >= 0),
  PRIMARY KEY (tenant_id, day, metric)
);
-- Requests per route (its pattern, e.g. 'GET /v1/invoices/:id') per UTC day.
CREATE TABLE usage_route_days (
  tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  day       date NOT NULL,
  route     text NOT NULL CHECK (char_length(route) <= 200),
  requests  bigint NOT NULL CHECK (requests >= 0),
  PRIMARY KEY (tenant_id, day, route)
);
-- Each billing notice sent, once per period: a quota's 80 % and 100 %, and the period's close.
CREATE TABLE usage_notices (
  tenant_id  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  period     date NOT NULL CHECK (extract(day FROM period) = 1),
  metric     text NOT NULL CHECK (metric ~ '^[a-z_]{0,40}$'),
  notice     text NOT NULL CHECK (notice IN ('threshold_80', 'threshold_100', 'period_closed')),
  event_id   uuid NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, period, metric, notice)
);
-- Where the billing export reads a month of every tenant's totals.
CREATE INDEX usage_periods_period_idx ON usage_periods (period, tenant_id);

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['usage_periods', 'usage_days', 'usage_route_days', 'usage_notices'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) '
                   'WITH CHECK (tenant_id = current_tenant_id())', t);
    -- The runtime role reads; it writes only through the functions below.
    EXECUTE format('GRANT SELECT ON %I TO app', t);
  END LOOP;
END $$;
-- The operator's billing export reads every tenant's totals of a period in one statement (exports and
-- erasure, which also run as the owner, name their tenant explicitly in every statement).
CREATE POLICY operator_billing ON usage_periods FOR SELECT TO CURRENT_USER USING (true);

CREATE POLICY operator_billing ON usage_notices FOR SELECT TO CURRENT_USER USING (true);

-- A time-ordered id (UUIDv7: milliseconds, then random bits) for the events written here, like the
-- ids the server makes (src/ids.ts), so that they list in order with the others.
CREATE FUNCTION new_time_ordered_id() RETURNS uuid
  LANGUAGE sql VOLATILE
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
             PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
             FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
  $$;

-- The billing period (first day of the UTC month) and day of this transaction.
CREATE FUNCTION usage_period() RETURNS date
  LANGUAGE sql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT date_trunc('month', transaction_timestamp() AT TIME ZONE 'UTC')::date $$;
CREATE FUNCTION usage_day() RETURNS date
  LANGUAGE sql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT (transaction_timestamp() AT TIME ZONE 'UTC')::date $$;

-- A tenant's limit in force: its override, else its plan's, else the server's default (set by each
-- request's binding statement in app.default_limits; a transaction without it knows no default), else
-- none. NULL is unlimited. Reads the bound tenant's row only (RLS).
CREATE FUNCTION tenant_limit(p_tenant uuid, p_name text) RETURNS bigint
  LANGUAGE plpgsql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  overrides jsonb;
  plan_limits jsonb;
  defaults jsonb;
BEGIN
  SELECT l.overrides, p.limits INTO overrides, plan_limits
    FROM public.tenant_limits l LEFT JOIN public.plans p ON p.name = l.plan
   WHERE l.tenant_id = p_tenant;
  IF overrides ? p_name THEN
    RETURN (overrides ->> p_name)::bigint;
  END IF;
  IF plan_limits ? p_name THEN
    RETURN (plan_limits ->> p_name)::bigint;
  END IF;
  defaults := nullif(current_setting('app.default_limits', true), '')::jsonb;
  RETURN (defaults ->> p_name)::bigint;
END $$;
GRANT EXECUTE ON FUNCTION tenant_limit(uuid, text) TO app;

-- When a quota resets: the next period's start for period quotas, never (NULL) for live objects.
CREATE FUNCTION usage_resets_at(p_metric text) RETURNS timestamptz
  LANGUAGE sql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT CASE WHEN p_metric IN ('customers', 'api_keys', 'members', 'webhook_endpoints') THEN NULL
                ELSE (public.usage_period() + interval '1 month')::timestamp AT TIME ZONE 'UTC' END
  $$;

-- A quota is full: the write is refused. SQLSTATE RQ001 (our own class); DETAIL carries the figures
-- as JSON for the API's problem body (src/db/errors.ts).
CREATE FUNCTION usage_refuse(p_metric text, p_limit bigint, p_used bigint) RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  RAISE EXCEPTION 'quota % exhausted: % of %', p_metric, p_used, p_limit
    USING ERRCODE = 'RQ001',
          DETAIL = json_build_object('quota', p_metric, 'limit', p_limit, 'used', p_used,
                                     'resets_at', public.usage_resets_at(p_metric))::text;
END $$;

-- The billing notices for a counter that went from `before` to `after` against `lim`: an event
-- usage.threshold_reached at 80 % and at 100 %, each once per tenant, quota and period (usage_notices'
-- key makes "once" hold whatever the concurrency). The event is written in the same transaction, so a
-- write that rolls back sends no notice, and webhooks deliver it like every other event.
CREATE FUNCTION usage_notify_thresholds(p_tenant uuid, p_metric text, p_before bigint, p_after bigint, p_limit bigint)
  RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  percent integer;
  mark numeric;
  event uuid;
  p date := public.usage_period();
BEGIN
  IF p_limit IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;
  FOREACH percent IN ARRAY ARRAY[80, 100] LOOP
    mark := ceil(p_limit * percent / 100.0);
    CONTINUE WHEN NOT (p_before < mark AND p_after >= mark);
    event := public.new_time_ordered_id();
    INSERT INTO public.usage_notices (tenant_id, period, metric, notice, event_id)
      VALUES (p_tenant, p, p_metric, 'threshold_' || percent, event)
      ON CONFLICT DO NOTHING;
    CONTINUE WHEN NOT FOUND;
    -- The shard given, not left to its default: tenant_shard() resolves names on the caller's search_path.
    INSERT INTO public.events (tenant_id, id, shard, type, resource_type, resource_id, data, actor_type, actor_id)
      VALUES (p_tenant, event, (SELECT t.shard FROM public.tenants t WHERE t.id = p_tenant),
              'usage.threshold_reached', 'usage', to_char(p, 'YYYY-MM'),
              jsonb_build_object('period', to_char(p, 'YYYY-MM'), 'quota', p_metric, 'threshold_percent', percent,
                                 'limit', p_limit, 'used', p_after, 'resets_at', public.usage_resets_at(p_metric)),
              'system', 'rowfence');
  END LOOP;
END $$;

-- Adds to a counter of the bound tenant, for this period and day. With p_enforce, a quota the addition
-- would exceed refuses it (RQ001): the period's row is locked by the upsert, so concurrent additions are
-- judged one after the other against the latest total. Work done with no tenant bound (a superuser's
-- maintenance or seeding, which bypasses row-level security) is not metered.
CREATE FUNCTION usage_add(p_tenant uuid, p_metric text, p_amount bigint, p_enforce boolean) RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  lim bigint := public.tenant_limit(p_tenant, p_metric);
  total bigint;
  used bigint;
BEGIN
  IF p_amount <= 0 OR public.current_tenant_id() IS DISTINCT FROM p_tenant THEN
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

-- Called from the triggers below (which run as the owner), never by the runtime role itself.
REVOKE ALL ON FUNCTION usage_add(uuid, text, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION usage_notify_thresholds(uuid, text, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION usage_refuse(text, bigint, bigint) FROM PUBLIC;

-- Work metered where it is done. Only rows born in this transaction count (created_at defaults to its
-- start): rows an import copies, or a placement move re-inserts, were counted where they were made.
CREATE FUNCTION usage_meter_invoices() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.created_at = transaction_timestamp() THEN
      PERFORM public.usage_add(NEW.tenant_id, 'invoices_created', 1, true);
    END IF;
  ELSIF OLD.status = 'draft' AND NEW.status <> 'draft' THEN
    PERFORM public.usage_add(NEW.tenant_id, 'invoices_finalized', 1, false);
  END IF;
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION usage_meter_invoices() FROM PUBLIC;
-- At COMMIT: the counter's row is locked only for the commit, not for the rest of the request.
CREATE CONSTRAINT TRIGGER usage_meter_invoices_created AFTER INSERT ON invoices
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION usage_meter_invoices();
CREATE CONSTRAINT TRIGGER usage_meter_invoices_finalized AFTER UPDATE OF status ON invoices
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.status = 'draft' AND NEW.status <> 'draft') EXECUTE FUNCTION usage_meter_invoices();

CREATE FUNCTION usage_meter_deliveries() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  PERFORM public.usage_add(NEW.tenant_id, 'events_delivered', 1, false);
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION usage_meter_deliveries() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER usage_meter_deliveries AFTER UPDATE OF status ON webhook_deliveries
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.status <> 'succeeded' AND NEW.status = 'succeeded') EXECUTE FUNCTION usage_meter_deliveries();

CREATE FUNCTION usage_meter_exports() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  PERFORM public.usage_add(NEW.tenant_id, 'export_bytes', NEW.bytes, false);
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION usage_meter_exports() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER usage_meter_exports AFTER UPDATE OF status ON tenant_exports
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.status <> 'ready' AND NEW.status = 'ready') EXECUTE FUNCTION usage_meter_exports();

-- Quotas of live objects: at COMMIT, under the tenant's lock for that quota (an advisory lock held to
-- the end of the commit), the tenant's objects are counted, this transaction's included; more than the
-- quota refuses the write. Counting (rather than keeping a counter) cannot drift from the rows.
CREATE FUNCTION usage_check_objects() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  quota text := TG_ARGV[0];
  lim bigint;
  n bigint;
BEGIN
  IF NEW.created_at <> transaction_timestamp() OR public.current_tenant_id() IS DISTINCT FROM NEW.tenant_id THEN
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
REVOKE ALL ON FUNCTION usage_check_objects() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER usage_quota_customers AFTER INSERT ON customers
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION usage_check_objects('customers');
CREATE CONSTRAINT TRIGGER usage_quota_api_keys AFTER INSERT ON api_keys
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION usage_check_objects('api_keys');
CREATE CONSTRAINT TRIGGER usage_quota_members AFTER INSERT ON memberships
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION usage_check_objects('members');
CREATE CONSTRAINT TRIGGER usage_quota_webhook_endpoints AFTER INSERT ON webhook_endpoints
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION usage_check_objects('webhook_endpoints');

-- Request counts (and refusals), which the server tallies in memory and writes in batches for the
-- bound tenant: per route and day, and into the day's and the period's totals. Only these counters:
-- the billable ones are written by the triggers above, never from here.
CREATE FUNCTION usage_record_requests(p_day date, p_routes text[], p_requests bigint[], p_metrics text[],
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
REVOKE ALL ON FUNCTION usage_record_requests(date, text[], bigint[], text[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_record_requests(date, text[], bigint[], text[], bigint[]) TO app;

-- A change of limits reaches every instance's limits cache on the credential cache's channel.
CREATE FUNCTION notify_limits_change() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  changed record := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
BEGIN
  IF TG_TABLE_NAME = 'plans' THEN
    PERFORM pg_notify('rowfence_auth', 'plan:' || changed.name);
  ELSE
    PERFORM pg_notify('rowfence_auth', 'limits:' || changed.tenant_id);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER plans_notify AFTER INSERT OR UPDATE OR DELETE ON plans
  FOR EACH ROW EXECUTE FUNCTION notify_limits_change();
CREATE TRIGGER tenant_limits_notify AFTER INSERT OR UPDATE OR DELETE ON tenant_limits
  FOR EACH ROW EXECUTE FUNCTION notify_limits_change();

-- A period's end, for the bound tenant: the event usage.period_closed with the period's totals, once
-- (usage_notices' key). Run by the maintenance sweep as the owner, once the period is over; true when
-- this call sent it.
CREATE FUNCTION usage_close_period(p_tenant uuid, p_period date) RETURNS boolean
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  event uuid := public.new_time_ordered_id();
  totals jsonb;
BEGIN
  IF p_period >= public.usage_period() THEN
    RAISE EXCEPTION 'usage_close_period: % is not over', p_period USING ERRCODE = '22023';
  END IF;
  INSERT INTO public.usage_notices (tenant_id, period, metric, notice, event_id)
    VALUES (p_tenant, p_period, '', 'period_closed', event)
    ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT coalesce(jsonb_object_agg(u.metric, u.amount), '{}'::jsonb) INTO totals
    FROM public.usage_periods u WHERE u.tenant_id = p_tenant AND u.period = p_period;
  INSERT INTO public.events (tenant_id, id, shard, type, resource_type, resource_id, data, actor_type, actor_id)
    VALUES (p_tenant, event, (SELECT t.shard FROM public.tenants t WHERE t.id = p_tenant),
            'usage.period_closed', 'usage', to_char(p_period, 'YYYY-MM'),
            jsonb_build_object('period', to_char(p_period, 'YYYY-MM'),
                               'starts_at', p_period::timestamp AT TIME ZONE 'UTC',
                               'ends_at', (p_period + interval '1 month')::timestamp AT TIME ZONE 'UTC',
                               'totals', totals),
            'system', 'rowfence');
  RETURN true;
END $$;
REVOKE ALL ON FUNCTION usage_close_period(uuid, date) FROM PUBLIC;

-- bind_tenant (as in 0017) also answers, when it checks a credential (a request's binding), the tenant's
-- plan limits and overrides: each request learns its tenant's limits in force in the statement it sends
-- anyway, so that the server's memory of them (src/limits/limits-cache.ts) is as fresh as the tenant's
-- last request, at no extra round trip.
DROP FUNCTION bind_tenant(uuid, uuid, text);
CREATE FUNCTION bind_tenant(
  t uuid, key_id uuid, member_id text,
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
  IF key_id IS NOT NULL OR member_id IS NOT NULL THEN
    SELECT jsonb_build_object('plan', p.limits, 'overrides', l.overrides) INTO limits
      FROM public.tenant_limits l LEFT JOIN public.plans p ON p.name = l.plan WHERE l.tenant_id = t;
  END IF;
END $$;
