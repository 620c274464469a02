-- Idempotent tenant creation: POST /admin/v1/tenants with an idempotency-key header records, on the
-- registry row it creates, the SHA-256 of that key and of the canonical request. A repeat finds the
-- tenant by the key (within 24 hours of created_at; the route decides that), and two at once are
-- serialised by the unique constraint: the second waits for the first to commit, then fails and finds
-- it. The response's API key is never stored here: a repeat is given a new one.
ALTER TABLE tenants
  ADD COLUMN creation_key_hash bytea CHECK (octet_length(creation_key_hash) = 32),
  ADD COLUMN creation_request_hash bytea CHECK (octet_length(creation_request_hash) = 32),
  ADD CONSTRAINT tenants_creation_key_pair CHECK ((creation_key_hash IS NULL) = (creation_request_hash IS NULL)),
  -- NULLs are distinct: only tenants created with a key take part.
  ADD CONSTRAINT tenants_creation_key_key UNIQUE (creation_key_hash);
