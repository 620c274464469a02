import { chmod, chown, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { listenRecorder, runCli, runProgram, startServer } from '../helpers/cli.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { freePort } from '../helpers/net.ts'

// `rowfence` tenant, key and token commands as an operator runs them: child processes next to a real
// listening server (src/server.ts, on a database of this file's own), finding it with no flag but
// DATA_DIR (the server records itself in DATA_DIR/server.json and generates its operator token there).

// About 40 CLI runs, each a process that compiles TypeScript: a minute or two beside the rest of the suite.
t.setTimeout(300_000)
const dataDir = await mkdtemp(path.join(tmpdir(), 'rowfence-cli-'))
t.teardown(() => rm(dataDir, { recursive: true, force: true }))
const db = await createTestDatabase(t)
const server = startServer({
  DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl, DATA_DIR: dataDir, NODE_ENV: 'development',
})
t.teardown(async () => { await server.stop() })
const url = await server.listening
const cli = async (...args: string[]) => runCli(args, { DATA_DIR: dataDir })

interface Created { tenant: { id: string, slug: string }, api_key: { id: string, key: string } }
const api = async (key: string, pathname: string, init: RequestInit = {}) => fetch(`${url}${pathname}`, {
  ...init, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...init.headers },
})
async function createTenant (slug: string): Promise<Created> {
  const run = await cli('tenants', 'create', '--name', slug, '--slug', slug, '--json')
  if (run.code !== 0) throw new Error(`creating ${slug} failed: ${run.stderr}`)
  return JSON.parse(run.stdout) as Created
}

/** The one line an error is: on stderr, nothing on stdout, no stack trace. */
const oneErrorLine = (run: { stdout: string, stderr: string }, pattern: RegExp): boolean =>
  run.stdout === '' && pattern.test(run.stderr) && run.stderr.split('\n').length === 2 && !/\n\s+at /.test(run.stderr)

t.test('tenants create prints the tenant and its owner key once; the key works; a taken slug exits 4', async (t) => {
  const run = await cli('tenants', 'create', '--name', 'Acme', '--slug', 'acme')
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /^id: +[0-9a-f-]{36}\nname: +Acme\nslug: +acme\nplacement: +pooled\n/)
  const key = /^(rfk_\S+)$/m.exec(run.stdout)?.[1]
  t.ok(key, 'the key, on a line of its own')
  t.equal((await api(key!, '/v1/tenant')).status, 200, 'and the server takes it')
  const taken = await cli('tenants', 'create', '--name', 'Acme again', '--slug', 'acme')
  t.equal(taken.code, 4)
  t.ok(oneErrorLine(taken, /^rowfence tenants create: a tenant with this slug already exists\n$/), taken.stderr)
  const bad = await cli('tenants', 'create', '--name', 'Bad', '--slug', 'Not A Slug')
  t.equal(bad.code, 2, 'the server calling the input invalid is a usage error')
  t.match(bad.stderr, /^rowfence tenants create: .*slug/)
})

t.test('--json prints one JSON document; list, show by id and by slug agree', async (t) => {
  const run = await cli('--json', 'tenants', 'create', '--name', 'Json', '--slug', 'json-co',
    '--placement', 'dedicated')
  t.equal(run.code, 0, run.stderr)
  const created = JSON.parse(run.stdout) as Created
  t.match(created, { tenant: { slug: 'json-co', placement: 'dedicated' }, api_key: { key: /^rfk_/ } })
  const listed = await cli('tenants', 'list', '--json')
  t.equal(listed.code, 0, listed.stderr)
  const tenants = JSON.parse(listed.stdout) as Array<{ id: string, slug: string }>
  t.ok(tenants.some((x) => x.id === created.tenant.id), 'the new tenant is listed')
  const human = await cli('tenants', 'list')
  t.match(human.stdout, /^ID +SLUG +PLACEMENT +STATUS +CREATED +NAME\n/)
  t.match(human.stdout, new RegExp(`^${created.tenant.id} +json-co +dedicated +active `, 'm'))
  const byId = JSON.parse((await cli('tenants', 'show', created.tenant.id, '--json')).stdout) as unknown
  const bySlug = JSON.parse((await cli('tenants', 'show', 'json-co', '--json')).stdout) as unknown
  t.same(bySlug, byId)
  t.match(byId, { id: created.tenant.id, slug: 'json-co', status: 'active' })
  const missing = await cli('tenants', 'show', '0190a6d2-0000-7000-8000-000000000000')
  t.equal(missing.code, 3)
  t.ok(oneErrorLine(missing, /^rowfence tenants show: tenant not found\n$/), missing.stderr)
  t.equal((await cli('tenants', 'show', 'nobody')).code, 3, 'an unknown slug too')
  const moved = await cli('tenants', 'placement', 'json-co', 'pooled', '--json')
  t.equal(moved.code, 0, moved.stderr)
  t.match(JSON.parse(moved.stdout), { tenant: { id: created.tenant.id, placement: 'pooled' } })
})

t.test('keys issue prints a working key once; keys revoke makes it fail with 401', async (t) => {
  const created = await createTenant('keyed')
  const issued = await cli('keys', 'issue', 'keyed', '--name', 'ci reader', '--scopes', 'read', '--json')
  t.equal(issued.code, 0, issued.stderr)
  const key = JSON.parse(issued.stdout) as { id: string, key: string, name: string, scopes: string[] }
  t.match(key, { name: 'ci reader', scopes: ['read'], tenant_id: created.tenant.id })
  t.equal((await api(key.key, '/v1/tenant')).status, 200)
  const revoked = await cli('keys', 'revoke', created.tenant.id, key.id)
  t.equal(revoked.code, 0, revoked.stderr)
  t.equal(revoked.stdout, `revoked key ${key.id} of tenant ${created.tenant.id}\n`)
  t.equal((await api(key.key, '/v1/tenant')).status, 401, 'the revoked key gets 401')
  const again = await cli('keys', 'revoke', created.tenant.id, key.id)
  t.equal(again.code, 3, 'a key no longer live is not found')
  const last = await cli('keys', 'revoke', 'keyed', created.api_key.id)
  t.equal(last.code, 4, 'the last admin key is kept')
  t.ok(oneErrorLine(last, /^rowfence keys revoke: this is the tenant's last API key with the admin scope; /),
    last.stderr)
  const badScope = await cli('keys', 'issue', 'keyed', '--scopes', 'read,root')
  t.equal(badScope.code, 2)
  t.ok(oneErrorLine(badScope, /^rowfence keys issue: --scopes takes a comma-separated list of read, write, admin/),
    badScope.stderr)
})

t.test('keys issue says whether the key has owner rights, in both outputs', async (t) => {
  await createTenant('rights')
  const owner = await cli('keys', 'issue', 'rights')
  t.equal(owner.code, 0, owner.stderr)
  t.match(owner.stdout, /^owner rights: +yes \(/m, 'the default scopes include admin: an owner key')
  const reader = await cli('keys', 'issue', 'rights', '--scopes', 'read')
  t.match(reader.stdout, /^owner rights: +no$/m)
  const json = await cli('keys', 'issue', 'rights', '--scopes', 'read', '--json')
  t.match(JSON.parse(json.stdout), { scopes: ['read'], owner_rights: false })
})

t.test('tenants erase refuses without --yes, then erases and prints the receipt, listed afterwards', async (t) => {
  const created = await createTenant('erased')
  const refused = await cli('tenants', 'erase', created.tenant.id)
  t.equal(refused.code, 2)
  t.ok(oneErrorLine(refused,
    /^rowfence tenants erase: erasing \S+ removes all its data for good: add --yes to confirm\n$/), refused.stderr)
  t.equal((await api(created.api_key.key, '/v1/tenant')).status, 200, 'nothing was done')
  const erased = await cli('tenants', 'erase', created.tenant.id, '--yes')
  t.equal(erased.code, 0, erased.stderr)
  t.match(erased.stdout,
    new RegExp(`^erased tenant ${created.tenant.id} \\(erased\\)\\nreceipt: +[0-9a-f-]{36}\\n`))
  t.match(erased.stdout, /^verified: +yes: no table holds a row of the tenant$/m)
  t.equal((await api(created.api_key.key, '/v1/tenant')).status, 401, 'its key is gone with it')
  const receipts = await cli('tenants', 'receipts', created.tenant.id, '--json')
  t.equal(receipts.code, 0, receipts.stderr)
  t.match(JSON.parse(receipts.stdout), [{ tenant_id: created.tenant.id, slug: 'erased', verified: true }])
  t.equal((await cli('tenants', 'erase', created.tenant.id, '--yes')).code, 3, 'erasing it again: not found')
})

t.test('usage errors exit 2 with one line; a wrong token or no server exits 1', async (t) => {
  for (const args of [['tenants', 'frobnicate'], ['nonsense'], ['tenants', 'list', '--bogus'], ['tenants', 'show'],
    ['keys', 'revoke', 'acme', 'not-a-uuid'], ['export', 'Not A Slug'], ['token', '--ttl', '1y', '--user', 'u'],
    ['check', '--url', url], ['migrate', '--token-file', 'token'], ['check', '--insecure-http']]) {
    const run = await cli(...args)
    t.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`)
    t.match(run.stderr, /^rowfence[^\n]*: [^\n]+\n$/, 'one line on stderr')
  }
  const wrongToken = await cli('tenants', 'list', '--url', url, '--token', 'x'.repeat(40))
  t.equal(wrongToken.code, 1)
  t.ok(oneErrorLine(wrongToken,
    /^rowfence tenants list: the server at \S+ refused the operator token \(from --token\)\n$/), wrongToken.stderr)
  const nobody = `http://127.0.0.1:${await freePort()}`
  const noServer = await cli('tenants', 'list', '--url', nobody, '--token', 'x')
  t.equal(noServer.code, 1)
  t.ok(oneErrorLine(noServer, /^rowfence tenants list: cannot reach the server at \S+ \(ECONNREFUSED\): is it running/),
    noServer.stderr)
  const help = await cli('--help')
  t.equal(help.code, 0)
  t.match(help.stdout,
    /Exit codes:\n {2}0 +success\n {2}1 +failure.*\n {2}2 +usage error.*\n {2}3 +not found.*\n {2}4 +refused/)
  const commandHelp = await cli('tenants', 'erase', '--help')
  t.equal(commandHelp.code, 0)
  t.match(commandHelp.stdout, /^Usage: rowfence tenants erase <id\|slug> --yes\n/)
})

/** Writes DATA_DIR/server.json as `npm start` would (naming this live process), with `mode`. */
async function recordServer (dir: string, record: { url: string, admin_token_file: string | null }, mode = 0o600) {
  const file = path.join(dir, 'server.json')
  await rm(file, { force: true })
  await writeFile(file, JSON.stringify({ pid: process.pid, started_at: new Date().toISOString(), ...record }))
  await chmod(file, mode) // explicitly: the umask would take the group's write bit off
  return file
}

t.test('a server record someone else could have written is refused, and its token reaches nobody', async (t) => {
  const attacker = await listenRecorder()
  t.teardown(attacker.close)
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-record-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const tokenFile = path.join(dir, 'admin-token')
  await writeFile(tokenFile, 'generated-token\n', { mode: 0o600 })
  const list = async () => runCli(['tenants', 'list'], { DATA_DIR: dir })

  // First a record as npm start writes it: followed, token and all, so that the silence below means something.
  await recordServer(dir, { url: attacker.url, admin_token_file: tokenFile })
  const followed = await list()
  t.equal(followed.code, 0, followed.stderr)
  t.same(attacker.received.map((r) => r.authorization), ['Bearer generated-token'])
  attacker.received.length = 0

  const other = path.join(dir, 'other-token')
  await writeFile(other, 'another secret\n', { mode: 0o600 })
  await recordServer(dir, { url: attacker.url, admin_token_file: other })
  const otherFile = await list()
  t.equal(otherFile.code, 1, 'a record naming another token file')
  t.ok(oneErrorLine(otherFile,
    /^rowfence tenants list: refusing \S+\/server\.json: it names "\S+\/other-token" as the operator token/),
  otherFile.stderr)

  await recordServer(dir, { url: attacker.url, admin_token_file: tokenFile }, 0o620)
  const groupWritable = await list()
  t.equal(groupWritable.code, 1, 'a group-writable record')
  t.ok(oneErrorLine(groupWritable,
    /^rowfence tenants list: refusing \S+: it is writable by group or others \(mode 0620\): remove it .*--url\n$/),
  groupWritable.stderr)

  const real = await recordServer(dir, { url: attacker.url, admin_token_file: tokenFile })
  const elsewhere = path.join(dir, 'elsewhere.json')
  await writeFile(elsewhere, await readFile(real, 'utf8'), { mode: 0o600 })
  await rm(real)
  await symlink(elsewhere, real)
  const linked = await list()
  t.equal(linked.code, 1, 'a symbolic link')
  t.ok(oneErrorLine(linked, /^rowfence tenants list: refusing \S+: it is a symbolic link/), linked.stderr)

  // 0.0.0.0 is no loopback address, yet a connection to it reaches this machine's listeners (Linux,
  // macOS): a request the CLI sent there would be in attacker.received.
  await recordServer(dir, { url: `http://0.0.0.0:${attacker.port}`, admin_token_file: tokenFile })
  const remote = await list()
  t.equal(remote.code, 2, 'a record naming a host other than this machine')
  t.ok(oneErrorLine(remote, new RegExp('^rowfence tenants list: the recorded server http://0\\.0\\.0\\.0:\\d+ is not on ' +
    'this machine \\(loopback\\): its generated token is sent only to 127\\.0\\.0\\.1, ::1 or localhost')),
  remote.stderr)
  t.same(attacker.received, [], 'none of the refused records sent anything to the attacker')
})

t.test('a server record owned by another user is refused', {
  skip: process.getuid?.() === 0 ? false : 'giving a file to another user needs root',
}, async (t) => {
  const attacker = await listenRecorder()
  t.teardown(attacker.close)
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-record-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const tokenFile = path.join(dir, 'admin-token')
  await writeFile(tokenFile, 'generated-token\n', { mode: 0o600 })
  await chown(await recordServer(dir, { url: attacker.url, admin_token_file: tokenFile }), 65534, 65534)
  const run = await runCli(['tenants', 'list'], { DATA_DIR: dir })
  t.equal(run.code, 1)
  t.ok(oneErrorLine(run, /^rowfence tenants list: refusing \S+: it belongs to uid 65534, not to this user \(uid 0\)/),
    run.stderr)
  t.same(attacker.received, [])
})

t.test('the token crosses no network in cleartext, follows no redirect, and comes from --token-file', async (t) => {
  const attacker = await listenRecorder()
  t.teardown(attacker.close)
  const redirector = await listenRecorder(attacker.url)
  t.teardown(redirector.close)
  const remote = `http://0.0.0.0:${attacker.port}` // reaches the attacker, though not a loopback address
  const plain = await cli('tenants', 'list', '--url', remote, '--token', 'secret')
  t.equal(plain.code, 2)
  t.ok(oneErrorLine(plain, new RegExp('^rowfence tenants list: refusing to send the operator token in cleartext to ' +
    'http://0\\.0\\.0\\.0:\\d+: use https://, or pass --insecure-http')), plain.stderr)
  const fromEnv = await runCli(['tenants', 'list'],
    { DATA_DIR: dataDir, ROWFENCE_URL: remote, ROWFENCE_ADMIN_TOKEN: 's' })
  t.equal(fromEnv.code, 2, 'ROWFENCE_URL as well')
  const redirected = await cli('tenants', 'list', '--url', redirector.url, '--token', 'secret')
  t.equal(redirected.code, 1)
  t.ok(oneErrorLine(redirected, /^rowfence tenants list: the server at \S+ answered with a redirect, which the CLI /),
    redirected.stderr)
  t.equal(redirector.received.length, 1)
  t.same(attacker.received, [], 'nothing reached the host redirected to')
  const insecure = await cli('tenants', 'list', '--url', remote, '--token', 'secret', '--insecure-http')
  t.equal(insecure.code, 0, insecure.stderr)
  t.same(attacker.received.map((r) => r.authorization), ['Bearer secret'], 'with --insecure-http, as told')

  const tokenFile = path.join(dataDir, 'admin-token')
  const fromFile = await cli('tenants', 'show', 'acme', '--url', url, '--token-file', tokenFile)
  t.equal(fromFile.code, 0, fromFile.stderr)
  t.match(fromFile.stdout, /^slug: +acme$/m)
  const wrong = path.join(dataDir, 'wrong-token')
  await writeFile(wrong, 'x'.repeat(40), { mode: 0o600 })
  const refused = await cli('tenants', 'list', '--url', url, '--token-file', wrong)
  t.equal(refused.code, 1)
  t.match(refused.stderr, /refused the operator token \(from \S+wrong-token\)\n$/)
  t.equal((await cli('tenants', 'list', '--url', url, '--token', 'x', '--token-file', wrong)).code, 2, 'not both')
  t.equal((await cli('tenants', 'list', '--url', url, '--token-file', path.join(dataDir, 'none'))).code, 2)
  const help = await cli('tenants', 'list', '--help')
  t.match(help.stdout, /--token-file FILE/)
  t.match(help.stdout, /--insecure-http/)
  t.match(help.stdout.replace(/\s+/g, ' '),
    /shows in `ps` and shell history: prefer ROWFENCE_ADMIN_TOKEN or --token-file/)
})

t.test('export takes a tenant\'s slug as well as its id, looked up in the database', async (t) => {
  const created = await createTenant('exported')
  const env = { DATA_DIR: dataDir, DATABASE_URL: db.ownerUrl, APP_DATABASE_URL: db.appUrl, NODE_ENV: 'development' }
  const file = path.join(dataDir, 'exported.ndjson')
  const bySlug = await runCli(['export', 'exported', '--out', file, '--json'], env)
  t.equal(bySlug.code, 0, bySlug.stderr)
  t.match(JSON.parse(bySlug.stdout), { tenant_id: created.tenant.id, file, rows: Number, tables: { tenants: 1 } })
  const byId = await runCli(['export', created.tenant.id], env)
  t.equal(byId.code, 0, byId.stderr)
  t.equal(byId.stdout, await readFile(file, 'utf8'), 'the same export as by its id')
  const missing = await runCli(['export', 'no-such-tenant'], env)
  t.equal(missing.code, 3)
  t.ok(oneErrorLine(missing, /^rowfence export: no tenant with slug no-such-tenant\n$/), missing.stderr)
})

t.test('token prints only a JWT, which the server accepts for a member', async (t) => {
  const created = await createTenant('tokens')
  const added = await api(created.api_key.key, '/v1/members', {
    method: 'POST', body: JSON.stringify({ user_id: 'alice@idp', role: 'member' }),
  })
  t.equal(added.status, 201)
  const run = await cli('token', '--user', 'alice@idp', '--tenant', created.tenant.id, '--ttl', '15m')
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'the token and a newline, nothing else')
  t.equal(run.stderr, '')
  const jwt = run.stdout.trim()
  const accepted = await api(jwt, '/v1/membership/accept', {
    method: 'POST', headers: { 'x-tenant-id': created.tenant.id },
  })
  t.equal(accepted.status, 200, 'the user accepts the invitation with it')
  t.equal((await api(jwt, '/v1/tenant')).status, 200, 'and is served')
  // As `npm run -s token` too (the alias), with the old spelling of the flag.
  const alias = await runProgram('npm',
    ['run', '-s', 'token', '--', '--sub', 'alice@idp', '--tenant', created.tenant.id], { DATA_DIR: dataDir })
  t.equal(alias.code, 0, alias.stderr)
  t.match(alias.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/)
})

t.test('npx rowfence runs the package\'s own bin in the repository', async (t) => {
  const run = await runProgram('npx', ['--no-install', 'rowfence', 'tenants', 'list', '--json'], { DATA_DIR: dataDir })
  t.equal(run.code, 0, run.stderr)
  t.ok(Array.isArray(JSON.parse(run.stdout)), 'the tenants, as JSON')
  const viaScript = await runProgram('npm', ['run', '-s', 'rowfence', '--', 'tenants', 'show', 'acme'],
    { DATA_DIR: dataDir })
  t.equal(viaScript.code, 0, viaScript.stderr)
  t.match(viaScript.stdout, /^slug: +acme$/m)
})
