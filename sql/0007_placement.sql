-- Tenant placement: the large tables are partitioned by a shard number, and each tenant lives either
-- in one of 16 pooled shards (shared, chosen by hashing the tenant id) or in a dedicated shard of its
-- own (its own partition of every large table). One partition per tenant for every tenant does not
-- scale: measured on PostgreSQL 15, creating them slows to ~110 ms per tenant at 5,000 tenants, and
-- attaching a partition of a table whose foreign key references another partitioned table locks every
-- partition of it until max_locks_per_transaction runs out. Pooled tenants need no DDL to onboard.
--
-- The declaration: a table that is `PARTITION BY LIST (shard)` is a sharded table. Partition
-- creation (create_shard_partitions), placement moves, export and erasure all find these tables in
-- the catalog, so a new sharded table needs nothing but its own CREATE TABLE.

ALTER TABLE tenants
  ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erasing')),
  ADD COLUMN placement text NOT NULL DEFAULT 'pooled' CHECK (placement IN ('pooled', 'dedicated')),
  ADD COLUMN shard integer;

CREATE FUNCTION pooled_shards() RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16 $$;

-- The pooled shard of a tenant: stable, spread evenly, independent of the (time-ordered) id's prefix.
CREATE FUNCTION pooled_shard_for(t uuid) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT (hashtextextended(t::text, 0) & (pooled_shards() - 1))::integer $$;

-- Existing tenants are pooled. The owner is subject to the tenant policy too (FORCE), so it is lifted
-- for this one statement.
ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY;
UPDATE tenants SET shard = pooled_shard_for(id);
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE tenants ALTER COLUMN shard SET NOT NULL;

-- Dedicated shards are numbered from 1000 (pooled ones are 0..15). Only the owner can read it.
CREATE SEQUENCE dedicated_shards START 1000;

-- The shard of the tenant bound to the transaction: the default of every sharded table's shard
-- column, which the runtime role may not set itself, so rows always land where their tenant lives.
CREATE FUNCTION tenant_shard() RETURNS integer LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT shard FROM public.tenants WHERE id = current_tenant_id() $$;

-- Creates the partitions of shard p_shard for every sharded table, each protected exactly as its
-- parent: ENABLE and FORCE ROW LEVEL SECURITY and the tenant policy. Keys, foreign keys, indexes and
-- row triggers are cloned from the parent by PostgreSQL. Idempotent.
CREATE FUNCTION create_shard_partitions(p_shard integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  parent record;
  part text;
  created integer := 0;
BEGIN
  FOR parent IN
    SELECT c.relname
      FROM pg_partitioned_table pt
      JOIN pg_class c ON c.oid = pt.partrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
     WHERE n.nspname = 'public' AND a.attname = 'shard' AND NOT c.relispartition
     ORDER BY c.relname
  LOOP
    part := format('%s_s%s', parent.relname, p_shard);
    IF to_regclass(format('public.%I', part)) IS NULL THEN
      EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES IN (%s)', part, parent.relname, p_shard);
      EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', part);
      EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', part);
      EXECUTE format('CREATE POLICY tenant_isolation ON public.%I USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())', part);
      created := created + 1;
    END IF;
  END LOOP;
  RETURN created;
END $$;
REVOKE ALL ON FUNCTION create_shard_partitions(integer) FROM PUBLIC;

-- Recreate the large tables as sharded tables, keeping their rows. The owner reads and writes them
-- here across tenants, so RLS is lifted for it for the duration of this transaction.
ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY;
ALTER TABLE invoice_lines NO FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_events NO FORCE ROW LEVEL SECURITY;
CREATE TEMP TABLE keep_invoices ON COMMIT DROP AS SELECT * FROM invoices;
CREATE TEMP TABLE keep_invoice_lines ON COMMIT DROP AS SELECT * FROM invoice_lines;
CREATE TEMP TABLE keep_audit_events ON COMMIT DROP AS SELECT * FROM audit_events;
DROP TABLE invoice_lines, invoices, audit_events CASCADE; -- also drops audit_event_hash (it takes the row type) and the trigger

CREATE TABLE invoices (
  tenant_id    uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id           uuid NOT NULL,
  shard        integer NOT NULL DEFAULT tenant_shard(),
  customer_id  uuid NOT NULL,
  number       text,
  status       text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'open', 'paid', 'void')),
  currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  amount_cents bigint NOT NULL CHECK (amount_cents BETWEEN 0 AND 9007199254740991),
  due_date     date,
  memo         text CHECK (char_length(memo) <= 2000),
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  finalized_at timestamptz,
  paid_at      timestamptz,
  voided_at    timestamptz,
  -- A partitioned table's keys must contain its partition key; a tenant lives in exactly one shard,
  -- so (tenant_id, id) stays unique in effect.
  PRIMARY KEY (tenant_id, id, shard),
  CONSTRAINT invoices_customer_fkey FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
  CONSTRAINT invoices_number_key UNIQUE (tenant_id, number, shard),
  CONSTRAINT invoices_number_when_final CHECK ((status = 'draft') = (number IS NULL))
) PARTITION BY LIST (shard);
CREATE INDEX invoices_customer_idx ON invoices (tenant_id, customer_id, id);
CREATE INDEX invoices_status_idx ON invoices (tenant_id, status, id);

CREATE TABLE invoice_lines (
  tenant_id         uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  invoice_id        uuid NOT NULL,
  shard             integer NOT NULL DEFAULT tenant_shard(),
  position          smallint NOT NULL CHECK (position BETWEEN 1 AND 100),
  description       text NOT NULL CHECK (char_length(description) BETWEEN 1 AND 500),
  quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
  unit_amount_cents bigint NOT NULL CHECK (unit_amount_cents BETWEEN 0 AND 100000000000),
  amount_cents      bigint NOT NULL CHECK (amount_cents = quantity * unit_amount_cents AND amount_cents <= 9007199254740991),
  PRIMARY KEY (tenant_id, invoice_id, position, shard),
  -- Deferrable so that a placement move can re-shard invoices and lines in either order.
  CONSTRAINT invoice_lines_invoice_fkey FOREIGN KEY (tenant_id, invoice_id, shard)
    REFERENCES invoices (tenant_id, id, shard) ON DELETE CASCADE DEFERRABLE INITIALLY IMMEDIATE
) PARTITION BY LIST (shard);

CREATE TABLE audit_events (
  tenant_id     uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id            uuid NOT NULL,
  shard         integer NOT NULL DEFAULT tenant_shard(),
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
  PRIMARY KEY (tenant_id, id, shard),
  CONSTRAINT audit_events_seq_key UNIQUE (tenant_id, seq, shard)
) PARTITION BY LIST (shard);

-- Same hash as 0006 (it never covered placement): existing chains still verify.
CREATE FUNCTION audit_event_hash(prev bytea, e audit_events) RETURNS bytea
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT sha256(coalesce(prev, '\x'::bytea) || convert_to(jsonb_build_array(
    e.tenant_id, e.id, e.seq, (extract(epoch FROM e.occurred_at) * 1000000)::bigint,
    e.actor_type, e.actor_id, e.action, e.resource_type, e.resource_id, e.request_id, e.data)::text, 'UTF8')) $$;

DO $$
BEGIN
  FOR s IN 0 .. pooled_shards() - 1 LOOP
    PERFORM create_shard_partitions(s);
  END LOOP;
END $$;

INSERT INTO invoices (tenant_id, id, shard, customer_id, number, status, currency, amount_cents, due_date, memo,
                      created_at, updated_at, finalized_at, paid_at, voided_at)
  SELECT i.tenant_id, i.id, t.shard, i.customer_id, i.number, i.status, i.currency, i.amount_cents, i.due_date, i.memo,
         i.created_at, i.updated_at, i.finalized_at, i.paid_at, i.voided_at
    FROM keep_invoices i JOIN tenants t ON t.id = i.tenant_id;
INSERT INTO invoice_lines (tenant_id, invoice_id, shard, position, description, quantity, unit_amount_cents, amount_cents)
  SELECT l.tenant_id, l.invoice_id, t.shard, l.position, l.description, l.quantity, l.unit_amount_cents, l.amount_cents
    FROM keep_invoice_lines l JOIN tenants t ON t.id = l.tenant_id;
-- Copied before the chaining trigger exists, so seq and hashes are kept as they were.
INSERT INTO audit_events (tenant_id, id, shard, seq, occurred_at, actor_type, actor_id, action, resource_type,
                          resource_id, request_id, data, prev_hash, hash)
  SELECT a.tenant_id, a.id, t.shard, a.seq, a.occurred_at, a.actor_type, a.actor_id, a.action, a.resource_type,
         a.resource_id, a.request_id, a.data, a.prev_hash, a.hash
    FROM keep_audit_events a JOIN tenants t ON t.id = a.tenant_id;

CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  next_seq bigint;
  previous bytea;
BEGIN
  -- A row that already carries its hash is an event being moved between shards (PostgreSQL fires
  -- INSERT triggers when an UPDATE moves a row to another partition): keep it as it is. Only the
  -- owner can get here with a hash; the runtime role has no privilege on the hash columns.
  IF NEW.hash <> '\x'::bytea THEN
    RETURN NEW;
  END IF;
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

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['invoices', 'invoice_lines', 'audit_events'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())', t);
  END LOOP;
END $$;

-- The runtime role never chooses a shard (the default does) and never writes an audit hash.
GRANT SELECT ON invoices, invoice_lines, audit_events TO app;
GRANT INSERT (tenant_id, id, customer_id, number, status, currency, amount_cents, due_date, memo, created_at,
              updated_at, finalized_at, paid_at, voided_at) ON invoices TO app;
GRANT UPDATE (customer_id, number, status, currency, amount_cents, due_date, memo, updated_at, finalized_at,
              paid_at, voided_at) ON invoices TO app;
GRANT INSERT (tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ON invoice_lines TO app;
GRANT DELETE ON invoice_lines TO app;
GRANT INSERT (tenant_id, id, occurred_at, actor_type, actor_id, action, resource_type, resource_id, request_id, data)
  ON audit_events TO app;

-- Erasure receipts: operator records about a tenant, kept outside the tenant's data (no tenant_id
-- column, so nothing here is erased with it) and invisible to the runtime role.
CREATE TABLE erasure_receipts (
  id                uuid PRIMARY KEY,
  subject_tenant_id uuid NOT NULL,
  subject_slug      text NOT NULL,
  placement         text NOT NULL,
  requested_by      text NOT NULL,
  request_id        text,
  started_at        timestamptz NOT NULL,
  finished_at       timestamptz NOT NULL,
  rows_removed      jsonb NOT NULL,
  partitions_dropped boolean NOT NULL,
  verified          boolean NOT NULL
);
ALTER TABLE erasure_receipts ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasure_receipts FORCE ROW LEVEL SECURITY;
CREATE POLICY operator_only ON erasure_receipts TO CURRENT_USER USING (true) WITH CHECK (true);
