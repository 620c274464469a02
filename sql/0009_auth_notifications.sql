-- Invalidation of cached credentials on every server instance.
--
-- A server instance that has verified a key (or a membership) recently sends a request's statements
-- with only the tenant binding in front — no lookup — so the cache must learn at once of every change:
-- these triggers notify the rowfence_auth channel (LISTENed to by every instance), and since they are
-- triggers, every path that changes a credential is covered: the API, an operator, an erasure, a
-- hand-written UPDATE. Notifications are delivered when the changing transaction commits.

-- A placement move first marks the tenant 'moving' (and notifies), waits for the caches to let go,
-- then moves it (see src/db/placement.ts).
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check CHECK (status IN ('active', 'moving', 'erasing'));

CREATE FUNCTION notify_auth_change() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF TG_TABLE_NAME = 'api_keys' THEN
    PERFORM pg_notify('rowfence_auth', 'key:' || OLD.id);
  ELSIF TG_TABLE_NAME = 'memberships' THEN
    PERFORM pg_notify('rowfence_auth', 'member:' || OLD.tenant_id || ':' || OLD.user_id);
  ELSE
    PERFORM pg_notify('rowfence_auth', 'tenant:' || OLD.id);
  END IF;
  RETURN NULL;
END $$;

-- Not for last_used_at, which changes all the time and which caches do not hold.
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys FOR EACH ROW
  WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.scopes IS DISTINCT FROM NEW.scopes)
  EXECUTE FUNCTION notify_auth_change();
CREATE TRIGGER api_keys_notify_delete AFTER DELETE ON api_keys FOR EACH ROW EXECUTE FUNCTION notify_auth_change();
CREATE TRIGGER memberships_notify AFTER UPDATE OR DELETE ON memberships FOR EACH ROW EXECUTE FUNCTION notify_auth_change();
CREATE TRIGGER tenants_notify_update AFTER UPDATE ON tenants FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.shard IS DISTINCT FROM NEW.shard)
  EXECUTE FUNCTION notify_auth_change();
CREATE TRIGGER tenants_notify_delete AFTER DELETE ON tenants FOR EACH ROW EXECUTE FUNCTION notify_auth_change();
