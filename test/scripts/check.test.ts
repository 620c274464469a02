import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { runNpmScript } from '../helpers/npm.ts'
import { onboard, shardOf } from '../helpers/operator.ts'

// `npm run check` (an alias of `rowfence check`) as an operator runs it: a child process configured by the
// environment.

t.test('npm run check also refuses a sharded table without a partition for a live dedicated shard', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await onboard(ctx, 'checked', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  const ok = await runNpmScript('check', [], ctx.db)
  t.equal(ok.code, 0, ok.stderr)
  t.match(ok.stdout,
    /^ok: runtime role app is confined .*\nok: every sharded table has a partition for every live shard\n$/)

  await query(ctx.db.adminUrl,
    `ALTER TABLE audit_events DETACH PARTITION audit_events_s${shard}; DROP TABLE audit_events_s${shard}`)
  const refused = await runNpmScript('check', [], ctx.db)
  t.equal(refused.code, 1, refused.stdout)
  t.match(refused.stderr, /^rowfence check: 1 problem\(s\): the database is not safe to serve from$/m)
  const problem = `^problem: sharded table audit_events has no partition for shard ${shard} ` +
    '\\(dedicated to 1 tenant\\): '
  t.match(refused.stderr, new RegExp(problem))
})
