-- Audit hardening, and the bookkeeping that makes partition DDL short and recoverable.
--
-- 1. The audit trail's time is the database's: the runtime role can no longer supply occurred_at
--    (its INSERT privilege on the column is revoked) and a BEFORE INSERT trigger sets it to now()
--    whatever a non-owner supplied. Only the owner keeps its value (npm run import re-creates
--    exported events with their original times, which their hashes cover).
-- 2. shard_reservations: a dedicated shard whose partitions exist but that no tenant lives in (being
--    created for an onboarding, an import or a move; being released after a move or an erasure).
--    Partition DDL now runs in short transactions of its own, outside the transaction that moves a
--    tenant's rows, so this row is what ties the partitions to the operation until the hand-over
--    commits; a shard left reserved by an operation that died is released by the next sweep.
-- 3. erasure_receipts remember the dedicated shard and when its partitions were dropped (possibly
--    later than the erasure, by a sweep).
-- 4. create_missing_shard_partitions(): partitions of every sharded table for every shard in use.
--    A migration that adds a sharded table ends with `SELECT create_missing_shard_partitions();`
--    (create_shard_partitions alone runs only for new shards, so existing dedicated tenants would
--    have no partition of the new table). Start-up checks it (src/db/shard-checks.ts).

-- 1. Audit time -------------------------------------------------------------------------------------

-- Fires before audit_events_chain (triggers of one event fire in name order), so the hash covers
-- the time set here. SECURITY INVOKER on purpose: current_user is the inserting role.
CREATE FUNCTION audit_events_assign_time() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  -- An event being moved between shards (an UPDATE of shard fires INSERT triggers) keeps its time;
  -- only the owner can get here with a hash (the runtime role has no privilege on the hash columns).
  IF NEW.hash <> '\x'::bytea THEN
    RETURN NEW;
  END IF;
  IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
    NEW.occurred_at := now();
  END IF;
  RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION audit_events_assign_time() FROM PUBLIC;
CREATE TRIGGER audit_events_assign_time BEFORE INSERT ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_assign_time();

-- The runtime role names the event (actor, action, resource, request, data) and nothing the
-- database decides: not the time, not the chain columns (never granted; revoked for the record).
REVOKE INSERT (occurred_at, seq, prev_hash, hash) ON audit_events FROM app;

-- 2. Shard reservations -----------------------------------------------------------------------------

-- Operator bookkeeping, like erasure_receipts: no tenant_id column (it is not tenant data and is
-- neither exported nor erased with a tenant) and invisible to the runtime role.
CREATE TABLE shard_reservations (
  shard             integer PRIMARY KEY,
  subject_tenant_id uuid NOT NULL,
  purpose           text NOT NULL CHECK (purpose IN ('onboarding', 'import', 'move', 'release', 'erasure')),
  created_at        timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE shard_reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE shard_reservations FORCE ROW LEVEL SECURITY;
CREATE POLICY operator_only ON shard_reservations TO CURRENT_USER USING (true) WITH CHECK (true);

-- 3. Receipts ---------------------------------------------------------------------------------------

ALTER TABLE erasure_receipts
  ADD COLUMN shard integer,
  ADD COLUMN partitions_dropped_at timestamptz;

-- 4. Partitions for every shard in use --------------------------------------------------------------

-- The pooled shards, every tenant's shard, and the shards being created for a tenant. Not the
-- shards being released: their partitions are on their way out. Idempotent; returns how many
-- partitions it created.
CREATE FUNCTION create_missing_shard_partitions() RETURNS integer LANGUAGE plpgsql
  SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  s integer;
  created integer := 0;
BEGIN
  FOR s IN
    SELECT g FROM generate_series(0, pooled_shards() - 1) AS g
    UNION SELECT t.shard FROM public.tenants t
    UNION SELECT r.shard FROM public.shard_reservations r WHERE r.purpose IN ('onboarding', 'import', 'move')
    ORDER BY 1
  LOOP
    created := created + create_shard_partitions(s);
  END LOOP;
  RETURN created;
END $$;
REVOKE ALL ON FUNCTION create_missing_shard_partitions() FROM PUBLIC;

SELECT create_missing_shard_partitions();
