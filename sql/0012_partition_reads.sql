-- The runtime role reads a tenant's partition of a sharded table directly (src/db/tenant-scope.ts:
-- the scoping plugin names the partition of the tenant's shard in every SELECT), so that PostgreSQL
-- plans one plain table, and a prepared statement's generic plan covers that one partition. Each
-- partition carries the same ENABLE + FORCE ROW LEVEL SECURITY and tenant policy as its parent
-- (create_shard_partitions), so a direct read sees exactly what a read through the parent sees.
-- SELECT only: writes still go through the parent.

CREATE FUNCTION grant_partition_reads(p_shard integer) RETURNS void
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
DECLARE
  part regclass;
BEGIN
  FOR part IN
    SELECT c.oid::regclass
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_class p ON p.oid = i.inhparent
      JOIN pg_namespace n ON n.oid = p.relnamespace
      JOIN pg_partitioned_table pt ON pt.partrelid = p.oid
      JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
     WHERE n.nspname = 'public' AND a.attname = 'shard' AND c.relname = format('%s_s%s', p.relname, p_shard)
  LOOP
    EXECUTE format('GRANT SELECT ON %s TO app', part);
  END LOOP;
END $$;
REVOKE ALL ON FUNCTION grant_partition_reads(integer) FROM PUBLIC;

-- create_shard_partitions keeps its name and contract for its callers; it now also grants the reads.
ALTER FUNCTION create_shard_partitions(integer) RENAME TO create_shard_partitions_ungranted;
CREATE FUNCTION create_shard_partitions(p_shard integer) RETURNS integer
  LANGUAGE plpgsql
  AS $$
DECLARE
  created integer;
BEGIN
  created := public.create_shard_partitions_ungranted(p_shard);
  PERFORM public.grant_partition_reads(p_shard);
  RETURN created;
END $$;
REVOKE ALL ON FUNCTION create_shard_partitions(integer) FROM PUBLIC;

DO $$
DECLARE
  s integer;
BEGIN
  FOR s IN SELECT DISTINCT shard FROM tenants UNION SELECT generate_series(0, pooled_shards() - 1) LOOP
    PERFORM grant_partition_reads(s);
  END LOOP;
END $$;
