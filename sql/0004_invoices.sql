-- Invoices and their lines, and the per-tenant counter behind gap-free invoice numbers.

CREATE TABLE invoices (
  tenant_id    uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  id           uuid NOT NULL,
  customer_id  uuid NOT NULL,
  number       text,
  status       text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'open', 'paid', 'void')),
  currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- Computed by the server with exact integer arithmetic; never beyond 2^53 - 1 so every client's
  -- JSON number can hold it.
  amount_cents bigint NOT NULL CHECK (amount_cents BETWEEN 0 AND 9007199254740991),
  due_date     date,
  memo         text CHECK (char_length(memo) <= 2000),
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  finalized_at timestamptz,
  paid_at      timestamptz,
  voided_at    timestamptz,
  PRIMARY KEY (tenant_id, id),
  -- Composite: an invoice can only ever reference a customer of its own tenant, whatever the code does.
  CONSTRAINT invoices_customer_fkey FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
  CONSTRAINT invoices_number_key UNIQUE (tenant_id, number),
  CONSTRAINT invoices_number_when_final CHECK ((status = 'draft') = (number IS NULL))
);
CREATE INDEX invoices_customer_idx ON invoices (tenant_id, customer_id, id);
CREATE INDEX invoices_status_idx ON invoices (tenant_id, status, id);
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT ON invoices TO app;
GRANT UPDATE (customer_id, number, status, currency, amount_cents, due_date, memo, updated_at, finalized_at, paid_at, voided_at) ON invoices TO app;

CREATE TABLE invoice_lines (
  tenant_id         uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  invoice_id        uuid NOT NULL,
  position          smallint NOT NULL CHECK (position BETWEEN 1 AND 100),
  description       text NOT NULL CHECK (char_length(description) BETWEEN 1 AND 500),
  quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
  unit_amount_cents bigint NOT NULL CHECK (unit_amount_cents BETWEEN 0 AND 100000000000),
  amount_cents      bigint NOT NULL CHECK (amount_cents = quantity * unit_amount_cents AND amount_cents <= 9007199254740991),
  PRIMARY KEY (tenant_id, invoice_id, position),
  CONSTRAINT invoice_lines_invoice_fkey FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE invoice_lines ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoice_lines FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoice_lines
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
-- Lines of a draft are replaced wholesale when it is edited.
GRANT SELECT, INSERT, DELETE ON invoice_lines TO app;

-- One row per tenant, incremented in the finalizing transaction: its row lock serialises concurrent
-- finalizes of one tenant, and a rolled-back finalize rolls the increment back, so numbers have no
-- gaps. A global sequence would do neither, and would reveal other tenants' volume.
CREATE TABLE invoice_counters (
  tenant_id   uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id),
  last_number bigint NOT NULL CHECK (last_number > 0),
  PRIMARY KEY (tenant_id)
);
ALTER TABLE invoice_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoice_counters FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoice_counters
  USING (tenant_id = current_tenant_id())
  WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT ON invoice_counters TO app;
GRANT UPDATE (last_number) ON invoice_counters TO app;
