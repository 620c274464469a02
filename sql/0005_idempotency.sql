-- Idempotency keys: per tenant, for 24 hours. The row is inserted at the start of the request's
-- transaction and completed with the response in the same transaction, so a concurrent duplicate
-- blocks on the unique key until the first one commits (then replays it) or rolls back (then runs).
CREATE TABLE idempotency_keys (
  tenant_id   uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  key         text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
  fingerprint bytea NOT NULL,
  status      smallint,
  response    text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL DEFAULT now() + interval '24 hours',
  PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (tenant_id, expires_at);
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_keys
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO app;
GRANT UPDATE (status, response) ON idempotency_keys TO app;
