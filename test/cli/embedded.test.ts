import { access, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { runCli, startServer } from '../helpers/cli.ts'
import { freePort } from '../helpers/net.ts'

// `npm start` with the embedded database, as a developer runs it (no DATABASE_URL), and the CLI next
// to it with nothing but DATA_DIR: it finds the server through DATA_DIR/server.json and the database
// through the running cluster; a second `npm start` on the same folder is refused in one line.

// An embedded cluster's initdb and start, then about 15 CLI runs: a minute or two beside the rest of the suite.
t.setTimeout(300_000)
// The data folder itself is the temporary directory: PostgreSQL (its own user when we are root) must
// be able to reach into it, and startEmbedded opens it up (0711) for that.
const dataDir = await mkdtemp(path.join(tmpdir(), 'rowfence-embedded-'))
t.teardown(() => rm(dataDir, { recursive: true, force: true }))
const env = { DATA_DIR: dataDir, EMBEDDED_PG_PORT: String(await freePort()), NODE_ENV: 'development' }
// Key usage is not written during the test, so that two exports of the same tenant are the same bytes.
const server = startServer({ ...env, KEY_USAGE_FLUSH_MS: '3600000' })
t.teardown(async () => { await server.stop() })
const url = await server.listening
// The port too: with nothing running, a database command starts its own cluster, on that port.
const cli = async (...args: string[]) => runCli(args, { DATA_DIR: dataDir, EMBEDDED_PG_PORT: env.EMBEDDED_PG_PORT })
const exists = async (file: string): Promise<boolean> => access(file).then(() => true, () => false)

t.test('the server records its URL in DATA_DIR/server.json, readable by its user alone', async (t) => {
  const file = path.join(dataDir, 'server.json')
  t.equal((await stat(file)).mode & 0o777, 0o600)
  t.match(JSON.parse(await readFile(file, 'utf8')), {
    url, pid: Number, admin_token_file: path.join(dataDir, 'admin-token'),
  })
})

t.test('a second npm start on the same data folder is refused in one line, whatever its port', async (t) => {
  const second = startServer({ ...env, EMBEDDED_PG_PORT: String(await freePort()) })
  const run = await second.exited
  t.equal(run.code, 1)
  t.notMatch(run.stderr, /\n\s+at |failed to start|EMBEDDED_PG_PORT/, 'no stack trace, no advice about ports')
  const refusal = run.stderr.split('\n').filter((line) => line.startsWith('rowfence: not starting'))
  t.equal(refusal.length, 1, run.stderr)
  t.match(refusal[0], new RegExp('^rowfence: not starting: the data folder \\S+ is locked by a PostgreSQL already ' +
    'running on it \\(pid \\d+, port \\d+\\), most likely another `npm start` or rowfence command: use that one ' +
    '\\(npx rowfence finds it\\), stop it first, or set DATA_DIR to another folder to run a second one ' +
    `\\(rowfence pid \\d+ serves ${url.replaceAll('.', '\\.')}\\)$`))
  t.equal((await fetch(`${url}/healthz`)).status, 200, 'the first one serves on')
})

t.test('export, erase and import through the running server\'s database, with no flag but DATA_DIR', async (t) => {
  const created = await cli('tenants', 'create', '--name', 'Moving', '--slug', 'moving', '--json')
  t.equal(created.code, 0, created.stderr)
  const parsed = JSON.parse(created.stdout) as { tenant: { id: string }, api_key: { key: string } }
  const { tenant, api_key: { key } } = parsed
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' }
  const body = JSON.stringify({ name: 'Ada' })
  const customer = await fetch(`${url}/v1/customers`, { method: 'POST', headers, body })
  t.equal(customer.status, 201)

  const file = path.join(dataDir, 'moving.ndjson')
  const exported = await cli('export', tenant.id, '--out', file)
  t.equal(exported.code, 0, exported.stderr)
  t.match(exported.stderr, `rowfence: using the embedded PostgreSQL already running on ${dataDir}`)
  t.match(exported.stderr, /export .* 100% \| (\d+)\/\1 rows \| 0s left/, 'the bar ends full, with a real ETA')
  t.notMatch(exported.stderr, /\{eta|starting the embedded/)
  t.match(exported.stderr, new RegExp(`^exported (\\d+) rows of tenant ${tenant.id} to ${file} \\(peak RSS`, 'm'))
  t.equal(exported.stdout, '')
  t.equal((await stat(file)).mode & 0o777, 0o600, 'the export is readable by its user alone')
  t.notOk(await exists(`${file}.partial`), 'no partial file left')
  const asJson = await cli('export', tenant.id, '--out', file, '--json')
  t.match(JSON.parse(asJson.stdout), { tenant_id: tenant.id, file, rows: Number, tables: { tenants: 1 } })
  const toStdout = await cli('export', tenant.id)
  t.equal(toStdout.stdout, await readFile(file, 'utf8'), 'on stdout, the same bytes')

  t.equal((await cli('tenants', 'erase', 'moving', '--yes')).code, 0)
  t.equal((await fetch(`${url}/v1/tenant`, { headers })).status, 401, 'erased: its key is refused')
  const imported = await cli('import', file)
  t.equal(imported.code, 0, imported.stderr)
  const rows = (await readFile(file, 'utf8')).trimEnd().split('\n').length - 1
  t.match(imported.stderr, new RegExp(`import .* 100% \\| ${rows}/${rows} rows`), 'the bar ends at every row')
  t.match(imported.stdout, new RegExp(`^imported tenant ${tenant.id} \\(pooled\\): ${rows} rows \\(tenants 1, `))
  const customers = await fetch(`${url}/v1/customers`, { headers })
  t.equal(customers.status, 200, 'back: the same key works again')
  t.match(await customers.json(), { data: [{ name: 'Ada' }] })

  const again = await cli('import', file)
  t.equal(again.code, 4, 'an import over an existing tenant is refused')
  t.match(again.stderr, /^rowfence import: a tenant with id \S+ or slug moving already exists here$/m)
  const check = await cli('check')
  t.equal(check.code, 0, check.stderr)
  t.match(check.stdout, /^ok: runtime role app is confined/)
  const migrate = await cli('migrate', '--json')
  t.equal(migrate.code, 0, migrate.stderr)
  t.match(JSON.parse(migrate.stdout), { applied: [], already_applied: Number })
})

t.test('once the server stops, its record is gone: the API commands say so, the database ones start the ' +
  'embedded PostgreSQL for themselves and stop it again', async (t) => {
  t.equal((await server.stop()).code, 0)
  t.notOk(await exists(path.join(dataDir, 'server.json')), 'server.json removed')
  const list = await cli('tenants', 'list')
  t.equal(list.code, 1)
  t.match(list.stderr, /^rowfence tenants list: no server to talk to: no running server is recorded in \S+server\.json/)
  const check = await cli('check')
  t.equal(check.code, 0, check.stderr)
  t.match(check.stderr, 'starting the embedded PostgreSQL for this command')
  t.notOk(await exists(path.join(dataDir, 'pg', 'postmaster.pid')), 'and stopped it')
})
