-- api_keys.owner_rights defaults to false for every role.
--
-- 0010 made the default depend on the inserting role (NOT pg_has_role('app', 'MEMBER')): true for the
-- owner, which is how the operator's initial key got its owner rights without saying so. That also
-- handed owner rights to any key the owner inserted without naming the column: an import of an
-- export made before 0010 (whose key rows have no owner_rights), a seed script. Every code path that
-- creates a key now says whether it has owner rights (the operator's initial key: true; the API's
-- keys: as src/routes/v1/api-keys decides), so a key that does not say has none.
-- Existing rows keep their value; only the default changes.

ALTER TABLE api_keys ALTER COLUMN owner_rights SET DEFAULT false;
