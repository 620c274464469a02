import { spawn } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { onboard, shardOf } from '../helpers/operator.ts'

// `npm run check` as an operator runs it: a child process configured by the environment.

interface Run { code: number | null, stdout: string, stderr: string }

function npmCheck (database: { ownerUrl: string, appUrl: string }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['run', '--silent', 'check'], {
      cwd: path.resolve(import.meta.dirname, '../..'),
      env: { ...process.env, DATABASE_URL: database.ownerUrl, APP_DATABASE_URL: database.appUrl, NODE_ENV: 'test', ROWFENCE_TEST_DB: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    child.on('error', reject)
    child.on('close', (code) => { resolve({ code, stdout, stderr }) })
  })
}

t.test('npm run check also refuses a sharded table without a partition for a live dedicated shard', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await onboard(ctx, 'checked', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  const ok = await npmCheck(ctx.db)
  t.equal(ok.code, 0, ok.stderr)
  t.match(ok.stdout, /^ok: runtime role app is confined .*\nok: every sharded table has a partition for every live shard\n$/)

  await query(ctx.db.adminUrl, `ALTER TABLE audit_events DETACH PARTITION audit_events_s${shard}; DROP TABLE audit_events_s${shard}`)
  const refused = await npmCheck(ctx.db)
  t.equal(refused.code, 1, refused.stdout)
  t.match(refused.stderr, new RegExp(`^problem: sharded table audit_events has no partition for shard ${shard} \\(dedicated to 1 tenant\\): `))
})
