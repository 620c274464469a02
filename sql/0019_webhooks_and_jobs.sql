-- The asynchronous path: webhook endpoints and their deliveries, self-service exports, and the job
-- queue (graphile_worker, installed by the migrator before this file) that runs them.
--
-- Jobs carry references, not tenant data: {tenant_id, ref}, where ref is a row of that tenant that
-- the job reads under the tenant's binding, as the runtime role, exactly as a request does. A job
-- whose ref belongs to another tenant finds nothing.

-- Webhook endpoints. The signing secret is stored sealed with the server key (AES-256-GCM, bound to
-- tenant and endpoint: src/webhooks/secret-box.ts); after a rotation the previous one keeps signing
-- until previous_secret_expires_at.
CREATE TABLE webhook_endpoints (
  tenant_id                  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id                         uuid NOT NULL,
  url                        text NOT NULL CHECK (char_length(url) <= 2048),
  description                text NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
  -- 'invoice.finalized', 'invoice.*' or '*'.
  event_types                text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 50),
  status                     text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
  disabled_reason            text,
  secret_sealed              text NOT NULL,
  previous_secret_sealed     text,
  previous_secret_expires_at timestamptz,
  -- Set by the first failed attempt after a success; an endpoint failing for long enough is disabled.
  failing_since              timestamptz,
  created_at                 timestamptz NOT NULL DEFAULT now(),
  updated_at                 timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

-- One event to one endpoint: the message whose webhook-id is the event id, retried until it
-- succeeds or its attempts run out. A redelivery is a new row for the same event.
CREATE TABLE webhook_deliveries (
  tenant_id       uuid NOT NULL DEFAULT current_tenant_id(),
  id              uuid NOT NULL,
  endpoint_id     uuid NOT NULL,
  event_id        uuid NOT NULL,
  event_type      text NOT NULL,
  status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz DEFAULT now(),
  last_attempt_at timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (tenant_id, endpoint_id, created_at, id);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (tenant_id, event_id);

-- Every attempt: what the endpoint answered and how fast (the response truncated).
CREATE TABLE webhook_attempts (
  tenant_id        uuid NOT NULL DEFAULT current_tenant_id(),
  delivery_id      uuid NOT NULL,
  attempt          integer NOT NULL CHECK (attempt >= 1),
  started_at       timestamptz NOT NULL,
  status_code      integer,
  latency_ms       integer NOT NULL,
  error            text,
  response_excerpt text NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, delivery_id, attempt),
  FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id) ON DELETE CASCADE
);

-- A tenant's own export (POST /v1/exports): produced by a job under the tenant's binding, kept as
-- NDJSON chunks in the database (so any instance can stream it) until expires_at.
CREATE TABLE tenant_exports (
  tenant_id    uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id           uuid NOT NULL,
  status       text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'ready', 'failed')),
  actor_type   text NOT NULL,
  actor_id     text NOT NULL,
  rows_total   bigint,
  rows_done    bigint NOT NULL DEFAULT 0,
  bytes        bigint NOT NULL DEFAULT 0,
  error        text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  started_at   timestamptz,
  finished_at  timestamptz,
  expires_at   timestamptz,
  PRIMARY KEY (tenant_id, id)
);
CREATE TABLE tenant_export_chunks (
  tenant_id uuid NOT NULL DEFAULT current_tenant_id(),
  export_id uuid NOT NULL,
  seq       integer NOT NULL,
  data      bytea NOT NULL,
  PRIMARY KEY (tenant_id, export_id, seq),
  FOREIGN KEY (tenant_id, export_id) REFERENCES tenant_exports (tenant_id, id) ON DELETE CASCADE
);

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_deliveries', 'webhook_attempts', 'tenant_exports',
                           'tenant_export_chunks'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) '
                   'WITH CHECK (tenant_id = current_tenant_id())', t);
  END LOOP;
END $$;

GRANT SELECT, INSERT, DELETE ON webhook_endpoints TO app;
GRANT UPDATE (url, description, event_types, status, disabled_reason, secret_sealed, previous_secret_sealed,
  previous_secret_expires_at, failing_since, updated_at) ON webhook_endpoints TO app;
GRANT SELECT, INSERT ON webhook_deliveries TO app;
GRANT UPDATE (status, attempts, next_attempt_at, last_attempt_at) ON webhook_deliveries TO app;
GRANT SELECT, INSERT ON webhook_attempts TO app;
GRANT SELECT, INSERT ON tenant_exports TO app;
GRANT UPDATE (status, rows_total, rows_done, bytes, error, started_at, finished_at, expires_at)
  ON tenant_exports TO app;
GRANT SELECT, INSERT, DELETE ON tenant_export_chunks TO app;

-- Whether an endpoint subscribed to an event type: exactly, by its resource ('invoice.*'), or to all.
CREATE FUNCTION event_type_matches(patterns text[], type text) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT '*' = ANY (patterns) OR type = ANY (patterns) OR split_part(type, '.', 1) || '.*' = ANY (patterns) $$;

-- The only way the runtime role enqueues: for the tenant it is bound to, a known task, naming a row
-- of that tenant. It runs as the owner, so the runtime role needs no write access to the queue's
-- tables. Each job is flagged with its task's kind and its tenant: a worker skips the flags of the
-- tenants that already hold their share of its slots (src/jobs/worker.ts), so one tenant's backlog
-- or slow endpoint cannot take every slot.
CREATE FUNCTION enqueue_tenant_job(task text, ref uuid, run_at timestamptz DEFAULT now()) RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  t uuid := public.current_tenant_id();
  flag text;
BEGIN
  IF t IS NULL THEN
    RAISE EXCEPTION 'enqueue_tenant_job: no tenant is bound' USING ERRCODE = '42501';
  END IF;
  IF task = 'deliver_webhook' THEN
    PERFORM 1 FROM public.webhook_deliveries d WHERE d.tenant_id = t AND d.id = ref;
    flag := 'webhooks:' || t;
  ELSIF task = 'tenant_export' THEN
    PERFORM 1 FROM public.tenant_exports e WHERE e.tenant_id = t AND e.id = ref;
    flag := 'exports:' || t;
  ELSE
    RAISE EXCEPTION 'enqueue_tenant_job: unknown task %', task USING ERRCODE = '22023';
  END IF;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'enqueue_tenant_job: % % is not a row of the bound tenant', task, ref USING ERRCODE = '22023';
  END IF;
  -- One queued job per row at most (the key): a retry enqueued while an earlier run of the same
  -- delivery is still running replaces nothing it should not, and never doubles the chain.
  PERFORM graphile_worker.add_job(task, json_build_object('tenant_id', t, 'ref', ref),
                                  run_at => run_at, max_attempts => 10, job_key => task || ':' || ref,
                                  flags => ARRAY[flag]);
END $$;
REVOKE ALL ON FUNCTION enqueue_tenant_job(text, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION enqueue_tenant_job(text, uuid, timestamptz) TO app;

-- The outbox's fan-out: each new event gets a delivery, and its job, for every enabled endpoint of
-- the tenant subscribed to its type, in the transaction that wrote the event (no event is left
-- without its jobs; a rolled-back change leaves neither). Only events born in this transaction fan
-- out (created_at defaults to its start): rows copied by an import, or moved between shards (an
-- UPDATE that changes partition fires AFTER INSERT), were delivered where they were made.
CREATE FUNCTION events_fan_out() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  endpoint uuid;
  delivery uuid;
BEGIN
  IF NEW.created_at <> transaction_timestamp() THEN
    RETURN NULL;
  END IF;
  FOR endpoint IN
    SELECT e.id FROM public.webhook_endpoints e
     WHERE e.tenant_id = NEW.tenant_id AND e.status = 'enabled' AND public.event_type_matches(e.event_types, NEW.type)
  LOOP
    delivery := gen_random_uuid();
    INSERT INTO public.webhook_deliveries (tenant_id, id, endpoint_id, event_id, event_type)
      VALUES (NEW.tenant_id, delivery, endpoint, NEW.id, NEW.type);
    PERFORM public.enqueue_tenant_job('deliver_webhook', delivery);
  END LOOP;
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION events_fan_out() FROM PUBLIC;
CREATE TRIGGER events_fan_out AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_fan_out();

-- Worker processes say they are alive; the jobs a silent one had locked are handed back after its
-- lease (src/jobs/worker-lease.ts), instead of the queue library's fixed four hours.
CREATE TABLE worker_heartbeats (
  pool_id    text PRIMARY KEY CHECK (char_length(pool_id) <= 200),
  host       text NOT NULL CHECK (char_length(host) <= 255),
  pid        integer NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  seen_at    timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, DELETE ON worker_heartbeats TO app;
GRANT UPDATE (seen_at) ON worker_heartbeats TO app;

-- What the worker, running as the runtime role, needs of the queue's tables to take, finish, fail
-- and hand back jobs (the library's failure path rewrites the payload column, so UPDATE cannot be
-- narrowed to columns). Jobs hold only {tenant_id, ref}: reading them reaches no tenant's data, and
-- an altered job still binds the tenant it names and reads only that tenant's row, to deliver it to
-- that tenant's own endpoint. No INSERT on _private_jobs: enqueueing goes through enqueue_tenant_job.
-- The queue's tables have row-level security on and no policy (a role granted access sees nothing
-- until a policy says otherwise): the worker sees every job, since each job binds its own tenant.
-- known_crontabs is the library's scheduler bookkeeping, which it keeps even with no schedule.
GRANT USAGE ON SCHEMA graphile_worker TO app;
GRANT SELECT ON graphile_worker.migrations TO app;
GRANT SELECT, UPDATE, DELETE ON graphile_worker._private_jobs TO app;
GRANT SELECT, UPDATE, DELETE ON graphile_worker._private_job_queues TO app;
GRANT SELECT, INSERT ON graphile_worker._private_tasks TO app;
GRANT SELECT, INSERT, UPDATE ON graphile_worker._private_known_crontabs TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA graphile_worker TO app;
CREATE POLICY rowfence_worker ON graphile_worker._private_jobs TO app USING (true) WITH CHECK (true);
CREATE POLICY rowfence_worker ON graphile_worker._private_job_queues TO app USING (true) WITH CHECK (true);
CREATE POLICY rowfence_worker ON graphile_worker._private_tasks TO app USING (true) WITH CHECK (true);
CREATE POLICY rowfence_worker ON graphile_worker._private_known_crontabs TO app USING (true) WITH CHECK (true);
