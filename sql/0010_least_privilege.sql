-- Least privilege, for the runtime role and for the keys it mints.
--
-- 1. Grants the runtime role `app` holds but no runtime code uses are revoked:
--    - DELETE on api_keys: keys are revoked (revoked_at), never deleted, by the API; erasure deletes
--      them as the owner.
--    - UPDATE (name) on api_keys: no route renames a key.
--    UPDATE (role) on memberships stays although no code writes a role: it is the only UPDATE
--    privilege on memberships, and `SELECT ... FOR UPDATE` (the owners' row locks that serialise
--    removals of the last owner, src/repositories/memberships.ts) needs UPDATE on at least one
--    column. (Changing a role grants nothing INSERT and DELETE do not already allow.)
--    The start-up safety checks refuse any table privilege of the runtime role outside an explicit
--    allow-list (src/db/safety-checks.ts), so a grant added later must be added there too.
--
-- 2. api_keys.owner_rights: whether a key may act as an owner (add or remove an owner member, revoke
--    another key with owner rights). Before, every key with the admin scope could, so a member with
--    the admin role could mint such a key and promote itself. Now a key has owner rights only when
--    the operator issued it (the tenant's initial key) or a credential with owner rights created it
--    with the admin scope; the API decides for the keys it creates (src/routes/v1/api-keys).
--    The default is false for the runtime role (and any role that is a member of it) and true for the
--    owner, which is how the operator inserts the initial key.

REVOKE DELETE ON api_keys FROM app;
REVOKE UPDATE (name) ON api_keys FROM app;

ALTER TABLE api_keys ADD COLUMN owner_rights boolean NOT NULL DEFAULT false;
ALTER TABLE api_keys ALTER COLUMN owner_rights SET DEFAULT (NOT pg_has_role('app', 'MEMBER'));

-- Existing keys: only each tenant's initial key (the first one, created with the tenant by the
-- operator) keeps owner rights, and only while it has the admin scope. Keys created later through
-- the API get none: which of them an owner created is not recorded. The owner is subject to the
-- tenant policies (FORCE), so each tenant is bound in turn.
DO $$
DECLARE
  t uuid;
BEGIN
  FOR t IN SELECT id FROM tenants LOOP
    PERFORM set_config('app.current_tenant_id', t::text, true);
    UPDATE api_keys k SET owner_rights = true
     WHERE k.tenant_id = t AND 'admin' = ANY (k.scopes)
       AND k.id = (SELECT f.id FROM api_keys f WHERE f.tenant_id = t ORDER BY f.created_at, f.id LIMIT 1);
  END LOOP;
  PERFORM set_config('app.current_tenant_id', '', true);
END $$;
