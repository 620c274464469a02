// The README's walk-through, run as written, so that it cannot rot: changing a command in the README
// changes what this test runs. The ```sh blocks between <!-- walkthrough:start --> and
// <!-- walkthrough:end --> run in order, in one bash process, against a server started as `npm start`
// starts it (package.json's own start script). What differs from a newcomer's machine, and only that:
// - the server listens on a free port, so `http://127.0.0.1:3000` in the README is replaced by its URL;
// - DATA_DIR is a folder of this test's own (the CLI finds the server and its token there, as it finds
//   `.data/` for a newcomer), and DATABASE_URL / APP_DATABASE_URL name this test's database instead of
//   the embedded PostgreSQL, for the server and for the CLI's export and import alike;
// - CURL_HOME holds a .curlrc that makes every curl also report its status on stderr, so that the test
//   can check the 201s without the README having to print them.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createTestDatabase, query } from '../helpers/db.ts'
import { freePort } from '../helpers/net.ts'

// About 45 s alone (a server start and six CLI runs, each compiling TypeScript); more beside the suite.
t.setTimeout(300_000)

const ROOT = path.resolve(import.meta.dirname, '../..')
const README_PORT_URL = 'http://127.0.0.1:3000'
/** The webhook receiver's port in the README (in its URL and the listener's --port), rewritten to a free one. */
const README_HOOK_PORT = /(127\.0\.0\.1:|--port )4000\b/g

/** The walk-through's sh blocks, in order. */
function walkthroughBlocks (readme: string): string[] {
  const start = readme.indexOf('<!-- walkthrough:start -->')
  const end = readme.indexOf('<!-- walkthrough:end -->')
  if (start < 0 || end < start) throw new Error('README.md has no <!-- walkthrough:start/end --> pair')
  return [...readme.slice(start, end).matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!)
}

interface Run { code: number | null, stdout: string, stderr: string }

async function collect (child: ReturnType<typeof spawn>): Promise<Run> {
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'exit') as [number | null]
  return { code, stdout, stderr }
}

t.test('the README walk-through runs as written against a server started as npm start starts it', async (t) => {
  // The walk-through's own tools: fail, never skip, without them (.ci/run installs the Debian packages).
  for (const tool of ['bash', 'curl', 'jq']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`the walk-through needs ${tool}`)
  }
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8')
  const blocks = walkthroughBlocks(readme)
  t.ok(blocks.length >= 5, `${blocks.length} sh blocks in the walk-through`)
  t.ok(blocks.some((b) => b.includes(README_PORT_URL)), `the walk-through names ${README_PORT_URL}, which is rewritten`)

  const db = await createTestDatabase(t)
  // Inside the repository (under the ignored .data/), so that `npx rowfence` finds this package's own
  // command, as it does for a newcomer in their clone, and never looks for one in the registry.
  await mkdir(path.join(ROOT, '.data'), { recursive: true })
  const work = await mkdtemp(path.join(ROOT, '.data', 'walkthrough-'))
  t.teardown(() => rm(work, { recursive: true, force: true }))
  const dataDir = path.join(work, '.data')
  const database = { DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl, DATA_DIR: dataDir }

  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }
  const [command, ...args] = pkg.scripts.start.split(' ')
  t.equal(command, 'node', 'npm start runs node')
  const port = await freePort()
  const server = spawn(process.execPath, args, {
    cwd: ROOT,
    // As the walk-through says to start it: its webhook goes to a receiver on 127.0.0.1.
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      PORT: String(port),
      ...database,
      WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const served = collect(server)
  t.teardown(async () => {
    if (server.exitCode === null) server.kill('SIGTERM')
    await served
  })
  let startup = ''
  server.stderr!.on('data', (chunk: Buffer) => { startup += chunk.toString() })
  const deadline = Date.now() + 60_000
  let url: string | undefined
  while ((url = /listening on (http:\/\/\S+)/.exec(startup)?.[1]) === undefined) {
    if (Date.now() > deadline || server.exitCode !== null) throw new Error(`the server did not start: ${startup}`)
    await sleep(50)
  }
  t.match(startup, `operator token: ${path.join(dataDir, 'admin-token')}`, 'start-up names the operator token file')
  t.match(startup, `user JWT secret (development, generated): ${path.join(dataDir, 'jwt-secret')}`,
    'and the generated JWT secret file')

  const hookPort = String(await freePort())
  const curlHome = path.join(work, 'curl')
  await mkdir(curlHome)
  await writeFile(path.join(curlHome, '.curlrc'),
    'write-out = "%{stderr}curl: %{http_code} %{method} %{url_effective}\\n"\n')

  // Each block ends with a marker, so a failure says which block; `set -e` and pipefail make any failing
  // command, curl's HTTP errors included (--fail-with-body), end the run.
  const script = ['set -euo pipefail', 'trap \'echo "walkthrough: failed: $BASH_COMMAND" >&2\' ERR',
    ...blocks.map((block, i) => {
      const local = block.replaceAll(README_PORT_URL, url).replaceAll(README_HOOK_PORT, `$1${hookPort}`)
      return `${local}\necho "walkthrough: block ${i + 1} done"`
    }),
  ].join('\n')
  const bash = spawn('bash', ['-c', script], {
    cwd: work,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', CURL_HOME: curlHome, ...database },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const run = await collect(bash)
  const transcript = `--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
  t.equal(run.code, 0, `every command exits 0\n${transcript}`)
  for (let i = 1; i <= blocks.length; i++) t.match(run.stdout, `walkthrough: block ${i} done`, `block ${i} ran`)

  const statuses = [...run.stderr.matchAll(/^curl: (\d{3}) (\S+) (\S+)$/gm)].map(([, status, method, target]) =>
    `${status} ${method} ${new URL(target!).pathname.replace(/[0-9a-f-]{36}/g, ':id')}`)
  for (const created of ['/v1/customers', '/v1/invoices', '/v1/api-keys', '/v1/members']) {
    t.ok(statuses.includes(`201 POST ${created}`), `POST ${created} answered 201`)
  }
  t.ok(statuses.includes('200 POST /v1/membership/accept'), 'the user accepted the membership')
  t.ok(statuses.includes('204 DELETE /v1/api-keys/:id'), 'the read-only key was revoked')

  const lines = run.stdout.split('\n')
  const tenant = JSON.parse(await readFile(path.join(work, 'acme.json'), 'utf8')) as { tenant: { id: string } }
  const own = lines.find((l) => l.startsWith(`{"id":"${tenant.tenant.id}"`))
  t.match(own === undefined ? undefined : JSON.parse(own), { name: 'Acme', slug: 'acme' }, 'the key reads its tenant')
  t.ok(lines.includes('{"status":"draft","amount_cents":155000,"lines":[150000,5000]}'),
    'a draft, priced by the server')
  t.ok(lines.includes('{"status":"open","number":"INV-000001"}'), 'finalized with the first number')
  t.equal(lines.filter((l) => l === '{"status":"paid","number":"INV-000001"}').length, 1, 'paid')
  t.equal(lines.filter((l) => l === '403').length, 2, 'the read-only key and the viewer cannot write')
  t.equal(lines.filter((l) => l === '401').length, 2, 'the revoked key and the erased tenant\'s key are refused')
  t.ok(lines.includes('{"role":"admin","status":"active"}'), 'the user accepted as admin')
  t.ok(lines.includes('{"role":"viewer","status":"active"}'), 'and became a viewer')
  t.match(run.stdout, /^\{"ok":true,"events":\d+,"complete":true\}$/m, 'the audit chain verifies')
  t.ok(lines.includes('customer.created signature verified'), 'a webhook arrived, its signature verified')
  t.ok(lines.includes('{"event_type":"customer.created","status":"succeeded","attempts":1}'),
    'and its delivery is listed as succeeded')
  t.ok(lines.includes('{"type":"https://rowfence.dev/problems/rate-limited","status":429}'), 'over its burst: 429')
  t.match(run.stdout, /^ratelimit-policy: "burst";q=2;w=1, "sustained";q=6000;w=60$/im, 'with the policies')
  t.match(run.stdout, /^ratelimit: "burst";r=0;t=1, "sustained";r=\d+;t=\d+$/im, 'and what is left of them')
  t.match(run.stdout, /^retry-after: 1$/im, 'and when to retry')
  t.ok(lines.includes('{"name":"invoices_created","used":1,"limit":3}'), 'the usage, against the quota')
  t.ok(lines.includes('{"name":"customers","used":2,"limit":null}'), 'and the live customers')
  const last = lines.indexOf(`walkthrough: block ${blocks.length} done`)
  t.equal(lines[last - 1], '{"number":"INV-000001","status":"paid"}', 'after the import, the invoice is back, paid')

  // And the database agrees: the tenant was erased (a receipt) and imported again.
  const receipts = await query(db.adminUrl, 'SELECT verified FROM erasure_receipts WHERE subject_tenant_id = $1',
    [tenant.tenant.id])
  t.same(receipts, [{ verified: true }], 'one verified erasure receipt')
  const invoices = await query(db.adminUrl, 'SELECT status, number FROM invoices WHERE tenant_id = $1',
    [tenant.tenant.id])
  t.same(invoices, [{ status: 'paid', number: 'INV-000001' }], 'the imported tenant holds its paid invoice')
})
