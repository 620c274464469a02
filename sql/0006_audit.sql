-- The audit trail: append-only for the runtime role, and hash-chained per tenant so that an edited,
-- deleted or reordered event is detectable (GET /v1/audit-events/verify).

CREATE TABLE audit_events (
  tenant_id     uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id            uuid NOT NULL,
  -- seq, prev_hash and hash are always set by the chaining trigger below; the defaults only spare
  -- the inserter from supplying values that would be overwritten anyway.
  seq           bigint NOT NULL DEFAULT 0,
  occurred_at   timestamptz NOT NULL DEFAULT now(),
  actor_type    text NOT NULL CHECK (actor_type IN ('api_key', 'user', 'operator', 'system')),
  actor_id      text NOT NULL,
  action        text NOT NULL,
  resource_type text NOT NULL,
  resource_id   text NOT NULL,
  request_id    text,
  data          jsonb NOT NULL DEFAULT '{}',
  prev_hash     bytea,
  hash          bytea NOT NULL DEFAULT '\x',
  PRIMARY KEY (tenant_id, id),
  CONSTRAINT audit_events_seq_key UNIQUE (tenant_id, seq)
);
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
-- Insert and read, never change or remove.
GRANT SELECT, INSERT ON audit_events TO app;

-- The head of each tenant's chain. Only the chaining trigger touches it.
CREATE TABLE audit_heads (
  tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  seq       bigint NOT NULL,
  hash      bytea NOT NULL,
  PRIMARY KEY (tenant_id)
);
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT ON audit_heads TO app;

-- What an event's hash covers: the previous hash and every field, as a JSON array (whose text form
-- is canonical) with the time as integer microseconds (independent of the session's TimeZone).
CREATE FUNCTION audit_event_hash(prev bytea, e audit_events) RETURNS bytea
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT sha256(coalesce(prev, '\x'::bytea) || convert_to(jsonb_build_array(
    e.tenant_id, e.id, e.seq, (extract(epoch FROM e.occurred_at) * 1000000)::bigint,
    e.actor_type, e.actor_id, e.action, e.resource_type, e.resource_id, e.request_id, e.data)::text, 'UTF8')) $$;

-- Chains every new event to the tenant's head, whatever seq or hashes the inserter supplied. It runs
-- with the owner's rights (under the same tenant binding and RLS) so the runtime role needs no write
-- access to the head; upserting the head row locks it, serialising one tenant's appends.
CREATE FUNCTION audit_events_chain() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  next_seq bigint;
  previous bytea;
BEGIN
  INSERT INTO public.audit_heads AS h (tenant_id, seq, hash) VALUES (NEW.tenant_id, 1, '\x'::bytea)
    ON CONFLICT (tenant_id) DO UPDATE SET seq = h.seq + 1
    RETURNING h.seq, nullif(h.hash, '\x'::bytea) INTO next_seq, previous;
  NEW.seq := next_seq;
  NEW.prev_hash := previous;
  NEW.hash := public.audit_event_hash(previous, NEW);
  UPDATE public.audit_heads SET hash = NEW.hash WHERE tenant_id = NEW.tenant_id;
  RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION audit_events_chain() FROM PUBLIC;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_chain();
