-- Events: what changed in a tenant's resources, written in the same transaction as the change (the
-- outbox that webhooks will deliver from). `data` is the resource's state as the API showed it.
--
-- Sharded like audit_events: it grows with every write, so it lives in the tenant's shard (a
-- dedicated tenant's events in its own partition), and placement moves, export and erasure find it
-- in the catalog. The runtime role inserts and reads; retention deletes as the owner, tenant by
-- tenant (src/tenancy/event-retention.ts), so the runtime role needs no DELETE.
CREATE TABLE events (
  tenant_id     uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id            uuid NOT NULL,
  shard         integer NOT NULL DEFAULT tenant_shard(),
  type          text NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$' AND char_length(type) <= 100),
  resource_type text NOT NULL,
  resource_id   text NOT NULL,
  data          jsonb NOT NULL,
  request_id    text,
  actor_type    text NOT NULL CHECK (actor_type IN ('api_key', 'user', 'operator', 'system')),
  actor_id      text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id, shard)
) PARTITION BY LIST (shard);
-- Time filters and retention range on created_at; the list itself pages on the primary key.
CREATE INDEX events_created_idx ON events (tenant_id, created_at, id);
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON events
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
-- Never shard nor created_at: the database decides where and when.
GRANT SELECT ON events TO app;
GRANT INSERT (tenant_id, id, type, resource_type, resource_id, data, request_id, actor_type, actor_id)
  ON events TO app;

SELECT create_missing_shard_partitions();
