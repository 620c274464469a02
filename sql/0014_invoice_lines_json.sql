-- invoices.lines: the invoice's lines as the API shows them — a JSON array of
-- {description, quantity, unit_amount_cents, amount_cents} in position order — kept by the database.
--
-- Why: every read of an invoice carried a correlated aggregate over invoice_lines, and a page of 50
-- invoices ran 50 of them; measured, they were half of the invoice list's database time. The lines
-- stay in invoice_lines (one row each, with their checks and the composite foreign key); this column
-- is a copy derived from those rows, never written by anyone else:
--   - the runtime role has no INSERT or UPDATE privilege on it (sql/0004 grants by column);
--   - after every statement that inserts, deletes or updates invoice_lines, a trigger recomputes
--     the column of each invoice whose lines it touched, from the rows as they now are, inside the
--     same statement's transaction (so a failed write leaves no stale copy behind), and refuses a
--     write it could not follow (invoice_lines_resync below).
-- The trigger is statement-level with transition tables: an invoice created with 3 lines is
-- recomputed once, not three times. It runs as the owner (SECURITY DEFINER) under the same tenant
-- binding as the statement that fired it: the owner is subject to the tenant policy too (FORCE),
-- so it sees and changes exactly the rows that statement could.

ALTER TABLE invoices ADD COLUMN lines json NOT NULL DEFAULT '[]';

CREATE FUNCTION invoice_lines_json(p_tenant uuid, p_invoice uuid, p_shard integer) RETURNS json
  LANGUAGE sql STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$
    -- array_to_json, not json_agg: the same JSON without the line breaks json_agg puts between
    -- elements, which a json value keeps (and an NDJSON export must not contain).
    SELECT coalesce(array_to_json(array_agg(x)), '[]')
      FROM (SELECT l.description, l.quantity, l.unit_amount_cents, l.amount_cents
              FROM public.invoice_lines l
             WHERE l.tenant_id = p_tenant AND l.invoice_id = p_invoice AND l.shard = p_shard
             ORDER BY l.position) x
  $$;
REVOKE ALL ON FUNCTION invoice_lines_json(uuid, uuid, integer) FROM PUBLIC;

-- Recomputes one invoice's copy, its row locked first in a statement of its own: under READ
-- COMMITTED the UPDATE after it takes a fresh snapshot, so two transactions adding lines to one
-- invoice at once each see the other's committed line (an UPDATE that waited for the row lock
-- would recompute from its older snapshot and lose it). Refuses a line of a tenant other than the
-- bound one (no tenant bound: a superuser by hand): under FORCE the owner would not see its invoice
-- and the copy would go stale without a word. `required`: the line was written, so its invoice must
-- exist (the composite foreign key is deferrable: a line before its invoice would leave the new
-- invoice's copy empty); a deleted line may have lost its invoice already (ON DELETE CASCADE).
CREATE FUNCTION invoice_lines_resync(p_tenant uuid, p_invoice uuid, p_shard integer, required boolean) RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF p_tenant IS DISTINCT FROM public.current_tenant_id() THEN
    RAISE EXCEPTION 'invoice lines of tenant % written while % is bound', p_tenant, coalesce(public.current_tenant_id()::text, 'no tenant')
      USING ERRCODE = 'insufficient_privilege', HINT = 'bind the tenant (app.current_tenant_id) before writing its lines';
  END IF;
  PERFORM 1 FROM public.invoices WHERE tenant_id = p_tenant AND id = p_invoice AND shard = p_shard FOR UPDATE;
  IF NOT FOUND THEN
    IF required THEN
      RAISE EXCEPTION 'invoice lines written before their invoice % exists', p_invoice
        USING ERRCODE = 'foreign_key_violation', HINT = 'insert the invoice first';
    END IF;
    RETURN;
  END IF;
  UPDATE public.invoices SET lines = public.invoice_lines_json(p_tenant, p_invoice, p_shard)
   WHERE tenant_id = p_tenant AND id = p_invoice AND shard = p_shard;
END $$;
REVOKE ALL ON FUNCTION invoice_lines_resync(uuid, uuid, integer, boolean) FROM PUBLIC;

CREATE FUNCTION invoices_sync_lines() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  -- Planned per call, so the statements are pruned to the invoice's partition (a generic plan would
  -- lock every partition of invoices on each call).
  SET plan_cache_mode = force_custom_plan
  AS $$
DECLARE
  c record;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    -- A placement move (src/db/placement.ts) updates only the shard, and may move the lines before
    -- their invoice: the content is unchanged and the copy travels with the invoice row, so there is
    -- nothing to recompute (recomputing while the lines and their invoice sit in different shards
    -- would empty the copy).
    IF NOT EXISTS (SELECT tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents FROM new_lines
                   EXCEPT ALL
                   SELECT tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents FROM old_lines) THEN
      RETURN NULL;
    END IF;
  END IF;
  -- Transition tables exist only for the events that have them, hence the two loops.
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    FOR c IN SELECT DISTINCT tenant_id, invoice_id, shard FROM new_lines ORDER BY 1, 2, 3 LOOP
      PERFORM public.invoice_lines_resync(c.tenant_id, c.invoice_id, c.shard, true);
    END LOOP;
  END IF;
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    FOR c IN SELECT DISTINCT tenant_id, invoice_id, shard FROM old_lines ORDER BY 1, 2, 3 LOOP
      PERFORM public.invoice_lines_resync(c.tenant_id, c.invoice_id, c.shard, false);
    END LOOP;
  END IF;
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION invoices_sync_lines() FROM PUBLIC;

CREATE TRIGGER invoice_lines_sync_insert AFTER INSERT ON invoice_lines
  REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION invoices_sync_lines();
CREATE TRIGGER invoice_lines_sync_delete AFTER DELETE ON invoice_lines
  REFERENCING OLD TABLE AS old_lines FOR EACH STATEMENT EXECUTE FUNCTION invoices_sync_lines();
CREATE TRIGGER invoice_lines_sync_update AFTER UPDATE ON invoice_lines
  REFERENCING OLD TABLE AS old_lines NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION invoices_sync_lines();

-- The lines that exist already. The owner is subject to the tenant policy (FORCE), so it is lifted
-- for this transaction on the two parents (through a parent, only the parent's policy applies).
ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY;
ALTER TABLE invoice_lines NO FORCE ROW LEVEL SECURITY;
UPDATE invoices i SET lines = invoice_lines_json(i.tenant_id, i.id, i.shard)
 WHERE EXISTS (SELECT 1 FROM invoice_lines l WHERE l.tenant_id = i.tenant_id AND l.invoice_id = i.id AND l.shard = i.shard);
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
ALTER TABLE invoice_lines FORCE ROW LEVEL SECURITY;
