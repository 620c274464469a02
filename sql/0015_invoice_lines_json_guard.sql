-- The trigger of sql/0014, made safe against what it could not see.
--
-- 1. Concurrent writers. Two transactions adding lines to one invoice: the second one's UPDATE waited
--    for the first's row lock and then recomputed the copy from its own, older snapshot, losing the
--    first one's line. Now the invoice row is locked by a statement of its own first; under READ
--    COMMITTED the UPDATE that follows takes a fresh snapshot, which sees every committed line.
-- 2. Writers the tenant policy hides the invoice from. The function runs as the owner, whom FORCE
--    subjects to the policy: a line written with no tenant bound (a superuser by hand), or bound to
--    another tenant, or before its invoice exists (the composite foreign key is deferrable), found
--    no invoice to update and left the copy stale without a word. Now every touched line must belong
--    to the bound tenant, and a line inserted or updated must find its invoice; otherwise the
--    statement fails. (A deleted line may have lost its invoice already: ON DELETE CASCADE.)

CREATE OR REPLACE FUNCTION invoices_sync_lines() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  SET plan_cache_mode = force_custom_plan
  AS $$
DECLARE
  c record;
  bound uuid := public.current_tenant_id();
BEGIN
  IF TG_OP = 'UPDATE' THEN
    -- A placement move changes only the shard (and may move the lines before their invoice): the
    -- copy travels with the invoice row, nothing to recompute.
    IF NOT EXISTS (SELECT tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents FROM new_lines
                   EXCEPT ALL
                   SELECT tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents FROM old_lines) THEN
      RETURN NULL;
    END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    FOR c IN SELECT DISTINCT tenant_id, invoice_id, shard FROM new_lines ORDER BY 1, 2, 3 LOOP
      IF c.tenant_id IS DISTINCT FROM bound THEN
        RAISE EXCEPTION 'invoice lines of tenant % written while % is bound', c.tenant_id, coalesce(bound::text, 'no tenant')
          USING ERRCODE = 'insufficient_privilege', HINT = 'bind the tenant (app.current_tenant_id) before writing its lines';
      END IF;
      PERFORM 1 FROM public.invoices WHERE tenant_id = c.tenant_id AND id = c.invoice_id AND shard = c.shard FOR UPDATE;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'invoice lines written before their invoice % exists', c.invoice_id
          USING ERRCODE = 'foreign_key_violation', HINT = 'insert the invoice first';
      END IF;
      UPDATE public.invoices SET lines = public.invoice_lines_json(c.tenant_id, c.invoice_id, c.shard)
       WHERE tenant_id = c.tenant_id AND id = c.invoice_id AND shard = c.shard;
    END LOOP;
  END IF;
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    FOR c IN SELECT DISTINCT tenant_id, invoice_id, shard FROM old_lines ORDER BY 1, 2, 3 LOOP
      IF c.tenant_id IS DISTINCT FROM bound THEN
        RAISE EXCEPTION 'invoice lines of tenant % deleted while % is bound', c.tenant_id, coalesce(bound::text, 'no tenant')
          USING ERRCODE = 'insufficient_privilege', HINT = 'bind the tenant (app.current_tenant_id) before deleting its lines';
      END IF;
      PERFORM 1 FROM public.invoices WHERE tenant_id = c.tenant_id AND id = c.invoice_id AND shard = c.shard FOR UPDATE;
      IF FOUND THEN
        UPDATE public.invoices SET lines = public.invoice_lines_json(c.tenant_id, c.invoice_id, c.shard)
         WHERE tenant_id = c.tenant_id AND id = c.invoice_id AND shard = c.shard;
      END IF;
    END LOOP;
  END IF;
  RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION invoices_sync_lines() FROM PUBLIC;
