// SIGTERM to the real entry point (src/server.ts) while it is under load: in-flight requests finish,
// the process exits 0, and every request that got a 2xx is in the database, whole.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { createTestDatabase, query } from '../helpers/db.ts'

const ADMIN_TOKEN = 'shutdown-test-operator-token-0123456789'

async function startServer (t: { teardown: (fn: () => unknown) => void }, env: Record<string, string>): Promise<{
  url: string,
  child: ReturnType<typeof spawn>,
  exited: Promise<{ code: number | null, stderr: string }>,
}> {
  const child = spawn(path.resolve('node_modules/.bin/tsx'), ['src/server.ts'], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      LOG_LEVEL: 'info',
      PORT: '0',
      ADMIN_TOKEN,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => { child.kill('SIGKILL') })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.stdout!.resume()
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, stderr }))
  const deadline = Date.now() + 20_000
  let url: string | undefined
  while (url === undefined) {
    url = /listening on (http:\/\/\S+)/.exec(stderr)?.[1]
    if (url !== undefined) break
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the server did not start: ${stderr}`)
    await sleep(50)
  }
  return { url, child, exited }
}

async function provision (url: string): Promise<{ id: string, key: string }> {
  const res = await fetch(`${url}/admin/v1/tenants`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Shutdown', slug: 'shutdown' }),
  })
  const body = await res.json() as { tenant: { id: string }, api_key: { key: string } }
  return { id: body.tenant.id, key: body.api_key.key }
}

t.test('SIGTERM under load: in-flight requests finish, exit 0, no 2xx lost and nothing half-applied', async (t) => {
  const db = await createTestDatabase(t)
  const server = await startServer(t, { DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl })
  const tenant = await provision(server.url)
  const headers = { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json' }
  const seeded = await fetch(`${server.url}/v1/customers`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ name: 'seed' }),
  })
  const seed = await seeded.json() as { id: string }

  // One request that is inside its transaction when the signal comes: it waits on a row lock.
  const locker = new pg.Client({ connectionString: db.adminUrl })
  await locker.connect()
  t.teardown(() => locker.end())
  await locker.query('BEGIN')
  await locker.query('SELECT 1 FROM customers WHERE id = $1 FOR UPDATE', [seed.id])
  const slow = fetch(`${server.url}/v1/customers/${seed.id}`, {
    method: 'PATCH',
    headers,
    body: JSON.stringify({ name: 'finished during shutdown' }),
  })
  for (let i = 0; i < 250; i++) {
    const { rows } = await locker.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity ' +
      "WHERE wait_event_type = 'Lock' AND datname = current_database()")
    if (rows[0]!.n === 1) break
    await sleep(20)
  }

  const acknowledged: string[] = []
  const refused: string[] = []
  const load = { stop: false }
  const worker = async (w: number): Promise<void> => {
    for (let i = 0; !load.stop; i++) {
      const name = `w${w}-${i}`
      try {
        const res = await fetch(`${server.url}/v1/customers`, {
          method: 'POST',
          headers,
          body: JSON.stringify({ name }),
        })
        if (res.status === 201) acknowledged.push(name)
        else refused.push(`${res.status} ${res.headers.get('content-type') ?? ''}`)
        await res.arrayBuffer()
      } catch {
        return // the server stopped accepting connections
      }
    }
  }
  const workers = Array.from({ length: 12 }, (_, w) => worker(w))
  await sleep(700)
  server.child.kill('SIGTERM')
  await sleep(300)
  await locker.query('COMMIT') // the in-flight PATCH can now finish
  const slowRes = await slow
  t.equal(slowRes.status, 200, 'the request in flight at SIGTERM completed')
  const exitStarted = Date.now()
  const run = await server.exited
  t.ok(Date.now() - exitStarted < 5000,
    `exited ${Date.now() - exitStarted} ms after the last in-flight request finished`)
  load.stop = true
  await Promise.all(workers)
  t.equal(run.code, 0, 'exit code 0')
  t.notMatch(run.stderr, /failed|error/i, 'no errors logged on the way out')
  t.ok(acknowledged.length > 20, `${acknowledged.length} creates were acknowledged under load`)
  t.same(refused.filter((r) => !/^503 application\/problem\+json/.test(r)), [],
    'a request refused while closing is a 503 problem')

  const rows = await query<{ name: string, audited: boolean }>(db.adminUrl, `
    SELECT c.name, EXISTS (SELECT 1 FROM audit_events e
                            WHERE e.tenant_id = c.tenant_id AND e.resource_id = c.id::text
                              AND e.action = 'customer.created') AS audited
      FROM customers c WHERE c.tenant_id = $1`, [tenant.id])
  const stored = new Set(rows.map((r) => r.name))
  t.same(acknowledged.filter((n) => !stored.has(n)), [], 'every acknowledged create is stored')
  t.same(rows.filter((r) => !r.audited).map((r) => r.name), [],
    'every stored create has its audit event (none half-applied)')
  t.ok(stored.has('finished during shutdown'))
})
