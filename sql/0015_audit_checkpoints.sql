-- Audit checkpoints: how far a tenant's hash chain has been verified, so that verifying it stays
-- bounded as the trail grows.
--
-- GET /v1/audit-events/verify used to recompute every event's hash in one statement, so a long trail
-- always ran into the statement timeout. Now each verification starts from the tenant's newest
-- checkpoint (seq, hash): it checks that the event at seq still carries that hash and is still linked
-- to its predecessor, recomputes at most a bounded number of events after it (one statement,
-- index-ranged on (tenant_id, seq)), and records a new checkpoint where it stopped. Events before a
-- checkpoint are not re-examined by the tenant's verification; the operator's full verification
-- (POST /admin/v1/tenants/:id/audit/verify) walks the whole chain in bounded batches and checks every
-- checkpoint against its event.
--
-- A checkpoint vouches for nothing by itself: a checkpoint whose event is missing or carries another
-- hash is reported as a break. The runtime role may add checkpoints (its verification records them)
-- but never change or remove one; it cannot change events either, so a checkpoint it adds cannot
-- hide an edit it could not have made. Small (one row per verification that made progress), so not
-- sharded. Exported, imported and erased with the tenant like every tenant table.

CREATE TABLE audit_checkpoints (
  tenant_id  uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  seq        bigint NOT NULL CHECK (seq >= 1),
  hash       bytea NOT NULL CHECK (length(hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, seq)
);
ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_checkpoints
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
-- Insert and read, never change or remove; the time of a checkpoint is the database's.
GRANT SELECT ON audit_checkpoints TO app;
GRANT INSERT (tenant_id, seq, hash) ON audit_checkpoints TO app;
