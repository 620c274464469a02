import t from 'tap'
import pg from 'pg'
import { assertShardPartitions, checkShardPartitions } from '../../src/ops/shard-checks.ts'
import { as, buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { onboard, shardOf } from '../helpers/operator.ts'

const usageEvents = (name: string) => `CREATE TABLE ${name} (
    tenant_id uuid NOT NULL DEFAULT current_tenant_id() REFERENCES tenants (id), id uuid NOT NULL,
    shard integer NOT NULL DEFAULT tenant_shard(), PRIMARY KEY (tenant_id, id, shard)) PARTITION BY LIST (shard);
  ALTER TABLE ${name} ENABLE ROW LEVEL SECURITY; ALTER TABLE ${name} FORCE ROW LEVEL SECURITY;
  CREATE POLICY tenant_isolation ON ${name} USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id())`

t.test('a sharded table added after a dedicated tenant exists is flagged until ' +
  'create_missing_shard_partitions() gives it every partition', async (t) => {
  const ctx = await buildTestApp(t)
  const pool = new pg.Pool({ connectionString: ctx.db.ownerUrl, max: 1 })
  t.teardown(() => pool.end())
  const early = await onboard(ctx, 'here-before', 'dedicated')
  const shard = await shardOf(ctx, early.id)
  t.same(await checkShardPartitions(pool), [], 'the shipped schema passes')

  // A migration that only does what used to be "all it takes": the table and the pooled partitions.
  await query(ctx.db.ownerUrl, `${usageEvents('usage_events')};
    DO $$ BEGIN FOR s IN 0 .. pooled_shards() - 1 LOOP PERFORM create_shard_partitions(s); END LOOP; END $$`)
  const insert = () => query(ctx.db.ownerUrl, `BEGIN; SELECT set_config('app.current_tenant_id', '${early.id}', true);
    INSERT INTO usage_events (id) VALUES (gen_random_uuid()); COMMIT`)
  await t.rejects(insert(), { code: '23514' }, 'the existing dedicated tenant cannot store a row')
  const problems = await checkShardPartitions(pool)
  t.equal(problems.length, 1)
  t.match(problems[0], new RegExp(`^sharded table usage_events has no partition for shard ${shard} ` +
    '\\(dedicated to 1 tenant\\): .*create_missing_shard_partitions'))
  await t.rejects(assertShardPartitions(ctx.db.ownerUrl), { name: 'UnsafeDatabaseError', problems }, 'start-up refuses')

  // A table with no partition at all is flagged for every shard.
  await query(ctx.db.ownerUrl, usageEvents('bare_events'))
  t.match((await checkShardPartitions(pool))[0], new RegExp('^sharded table bare_events has no partition ' +
    'for shards 0, 1, 2, 3, 4, 5, 6, 7 and 9 more \\(dedicated to 1 tenant\\)'))

  const [{ created }] = await query<{ created: number }>(ctx.db.ownerUrl,
    'SELECT create_missing_shard_partitions() AS created') as [{ created: number }]
  t.equal(created, 1 + 17, "usage_events' partition for the dedicated shard, and all of bare_events'")
  t.same(await checkShardPartitions(pool), [])
  await assertShardPartitions(ctx.db.ownerUrl)
  await insert()
  const [part] = await query<{ force: boolean, policies: number }>(ctx.db.adminUrl, `
    SELECT c.relforcerowsecurity AS force, (SELECT count(*)::int FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
      FROM pg_class c WHERE c.relname = $1`, [`usage_events_s${shard}`])
  t.same(part, { force: true, policies: 1 }, 'the new partition is protected like its parent')
  t.equal((await ctx.app.inject(as(early, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
})

t.test('a dedicated shard on its way out is not required to be complete', async (t) => {
  const ctx = await buildTestApp(t)
  const pool = new pg.Pool({ connectionString: ctx.db.ownerUrl, max: 1 })
  t.teardown(() => pool.end())
  const tenant = await onboard(ctx, 'leaving', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  // As a release interrupted half-way leaves it: the tenant gone, the shard reserved, one partition
  // dropped.
  await query(ctx.db.adminUrl, `DELETE FROM api_keys WHERE tenant_id = $1;
    DELETE FROM audit_events WHERE tenant_id = $1; DELETE FROM audit_heads WHERE tenant_id = $1;
    DELETE FROM tenants WHERE id = $1`.replaceAll('$1', `'${tenant.id}'`))
  await query(ctx.db.ownerUrl, `INSERT INTO shard_reservations (shard, subject_tenant_id, purpose)
    VALUES (${shard}, '${tenant.id}', 'erasure');
    ALTER TABLE invoice_lines DETACH PARTITION invoice_lines_s${shard}; DROP TABLE invoice_lines_s${shard}`)
  t.same(await checkShardPartitions(pool), [])
})
