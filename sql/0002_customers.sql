-- Customers: the first business resource.
CREATE TABLE customers (
  tenant_id    uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id           uuid NOT NULL,
  name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  email        text CHECK (char_length(email) <= 320),
  external_ref text CHECK (char_length(external_ref) BETWEEN 1 AND 200),
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id),
  -- Unique per tenant only: two tenants may use the same reference without learning of each other.
  CONSTRAINT customers_external_ref_key UNIQUE (tenant_id, external_ref)
);
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON customers
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, DELETE ON customers TO app;
GRANT UPDATE (name, email, external_ref, updated_at) ON customers TO app;
