// The real entry point (src/server.ts) in a child process: start-up refusals and a clean shutdown.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import t from 'tap'
import { buildTestApp } from './helpers/app.ts'
import { createTestDatabase, query } from './helpers/db.ts'
import { onboard, shardOf } from './helpers/operator.ts'

interface Run {
  code: number | null
  stderr: string
}

function startServer (env: Record<string, string>): {
  child: ReturnType<typeof spawn>,
  output: () => string,
  exited: Promise<Run>,
} {
  const child = spawn(path.resolve('node_modules/.bin/tsx'), ['src/server.ts'], {
    // Load shedding is tested on its own (http-hardening.test.ts): on a machine busy with the other test
    // files, these servers would shed the requests that check they serve.
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      LOG_LEVEL: 'warn',
      PORT: '0',
      MAX_EVENT_LOOP_DELAY_MS: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.stdout!.resume()
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, stderr }))
  return { child, output: () => stderr, exited }
}

t.test('a bad environment value stops start-up with one line naming it', async (t) => {
  const { exited } = startServer({ PORT: 'eighty' })
  const run = await exited
  t.equal(run.code, 1)
  t.match(run.stderr, /^rowfence: invalid environment variable PORT: .*"eighty"\)\n$/)
})

t.test('a superuser runtime role is refused at start-up', async (t) => {
  const db = await createTestDatabase(t)
  const { exited } = startServer({
    DATABASE_URL: db.ownerUrl,
    APP_DATABASE_URL: db.adminUrl,
    ADMIN_TOKEN: 'x'.repeat(40),
  })
  const run = await exited
  t.equal(run.code, 1)
  t.match(run.stderr, /rowfence: refusing to start: runtime role \S+ is a superuser/)
})

t.test('a tenant table without FORCE ROW LEVEL SECURITY is refused at start-up', async (t) => {
  const db = await createTestDatabase(t)
  await query(db.ownerUrl, 'ALTER TABLE customers NO FORCE ROW LEVEL SECURITY')
  const { exited } = startServer({
    DATABASE_URL: db.ownerUrl,
    APP_DATABASE_URL: db.appUrl,
    ADMIN_TOKEN: 'x'.repeat(40),
  })
  const run = await exited
  t.equal(run.code, 1)
  t.match(run.stderr, /refusing to start: table customers does not FORCE ROW LEVEL SECURITY/)
})

t.test('a sharded table without a partition for a live dedicated shard is refused at start-up', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await onboard(ctx, 'lost-partition', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  await query(ctx.db.adminUrl,
    `ALTER TABLE invoice_lines DETACH PARTITION invoice_lines_s${shard}; DROP TABLE invoice_lines_s${shard}`)
  const { child, exited } = startServer({
    DATABASE_URL: ctx.db.ownerUrl,
    APP_DATABASE_URL: ctx.db.appUrl,
    ADMIN_TOKEN: 'x'.repeat(40),
  })
  // A server that starts anyway fails the test instead of hanging it (SIGTERM: tsx passes it on to the
  // server).
  const serving = setTimeout(() => { child.kill('SIGTERM') }, 30_000)
  const run = await exited
  clearTimeout(serving)
  t.equal(run.code, 1, run.stderr)
  t.match(run.stderr, new RegExp('^rowfence: refusing to start: sharded table invoice_lines has no partition ' +
    `for shard ${shard} \\(dedicated to 1 tenant\\): .*create_missing_shard_partitions\\(\\).*\n$`))
})

/** Waits until the server prints its URL (undefined after 30 s). */
async function listening (
  server: ReturnType<typeof startServer>,
  pattern = /listening on (http:\/\/\S+)/
): Promise<string | undefined> {
  const deadline = Date.now() + 30_000
  let url: string | undefined
  while (url === undefined && Date.now() < deadline) {
    url = pattern.exec(server.output())?.[1]
    if (url === undefined) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return url
}

t.test('a tenant a crashed move left moving is set back to active when the server starts', async (t) => {
  const db = await createTestDatabase(t)
  const id = '0190a6d2-0000-7000-8000-0000000000dd'
  await query(db.adminUrl, `INSERT INTO tenants (id, name, slug, shard, status)
    VALUES ('${id}', 'Stuck', 'stuck-mover', pooled_shard_for('${id}'), 'moving')`)
  const server = startServer({ DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl, ADMIN_TOKEN: 'x'.repeat(40) })
  t.teardown(() => { server.child.kill('SIGKILL') })
  t.ok(await listening(server), 'the server printed its URL')
  t.match(server.output(), `rowfence: start-up sweep: set 1 tenant(s) left moving back to active (${id})\n`)
  t.same(await query(db.adminUrl, 'SELECT status FROM tenants WHERE id = $1', [id]), [{ status: 'active' }])
  server.child.kill('SIGTERM')
  t.equal((await server.exited).code, 0)
})

t.test('a correct setup serves, and SIGTERM stops it cleanly with exit code 0', async (t) => {
  const db = await createTestDatabase(t)
  const server = startServer({ DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl, ADMIN_TOKEN: 'x'.repeat(40) })
  t.teardown(() => { server.child.kill('SIGKILL') })
  const deadline = Date.now() + 20_000
  let url: string | undefined
  while (url === undefined && Date.now() < deadline) {
    url = /listening on (http:\/\/\S+)/.exec(server.output())?.[1]
    if (url === undefined) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(url, 'the server printed its URL')
  const health = await fetch(`${url}/healthz`)
  t.equal(health.status, 200)
  const ready = await fetch(`${url}/readyz`)
  t.equal(ready.status, 200)
  server.child.kill('SIGTERM')
  const run = await server.exited
  t.equal(run.code, 0)
})

t.test('with WEB_CONCURRENCY=2, workers share the port and SIGTERM stops them all with exit code 0', async (t) => {
  const db = await createTestDatabase(t)
  const server = startServer({
    DATABASE_URL: db.ownerUrl,
    APP_DATABASE_URL: db.appUrl,
    ADMIN_TOKEN: 'x'.repeat(40),
    WEB_CONCURRENCY: '2',
  })
  t.teardown(() => { server.child.kill('SIGKILL') })
  const deadline = Date.now() + 30_000
  let url: string | undefined
  while (url === undefined && Date.now() < deadline) {
    url = /listening on (http:\/\/\S+) with 2 workers/.exec(server.output())?.[1]
    if (url === undefined) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(url, 'the primary announced the workers')
  const answers = await Promise.all(Array.from({ length: 20 }, async () => {
    const res = await fetch(`${url}/readyz`)
    return `${res.status} ${res.status === 200 ? '' : await res.text()}`.trim()
  }))
  t.same([...new Set(answers)], ['200'])
  server.child.kill('SIGTERM')
  const run = await server.exited
  t.equal(run.code, 0)
})
