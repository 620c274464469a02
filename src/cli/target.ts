import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { ConfigError, loadConfig, type Config } from '../config.ts'
import { isLoopbackHost } from '../config/database-url.ts'
import { databaseTls, type DatabaseTls } from '../db/tls.ts'
import { attachEmbedded, EmbeddedInUse, startEmbedded } from '../ops/embedded.ts'
import {
  readOwnFile, readServerRecord, serverRecordFile, UntrustedFile, type ServerRecord,
} from '../ops/server-record.ts'
import { OperatorApi } from './api.ts'
import type { RunContext } from './command.ts'
import { failureError, usageError, type Output } from './output.ts'

/**
 * How the CLI reaches what it works on.
 *
 * The operator API (tenants, keys): --url, else ROWFENCE_URL, else the server that `npm start` recorded
 * in DATA_DIR/server.json (while its process lives); the token from --token, --token-file,
 * ROWFENCE_ADMIN_TOKEN or ADMIN_TOKEN, else — for the recorded server only, never for a URL given by hand —
 * its generated token file.
 *
 * The token is what an attacker wants, so: a record this user did not write, or one that names another
 * token file, is refused (readServerRecord); the generated token goes only to a loopback URL; no token
 * goes over plain http:// to another host without --insecure-http; and redirects are never followed (api.ts).
 *
 * The database (export, import, check, migrate): DATABASE_URL and APP_DATABASE_URL when set; else the
 * embedded cluster in DATA_DIR — the running one when a PostgreSQL holds the folder (a running `npm start`,
 * or another command), reached with the secrets it was created with; else one this command starts and stops.
 * Never a second PostgreSQL on a locked folder.
 */

/**
 * The configuration from the environment; a bad value is a usage error. With `ownerAlone`, DATABASE_URL
 * without APP_DATABASE_URL is enough: export, import and migrate act as the owner only.
 */
export function environment (options: { ownerAlone?: boolean } = {}): Config {
  const env = { ...process.env }
  const ownerAlone = options.ownerAlone === true && nonEmpty(env.DATABASE_URL) !== undefined &&
    nonEmpty(env.APP_DATABASE_URL) === undefined
  // Validated as the pair the server needs, then the stand-in runtime URL is dropped again.
  if (ownerAlone) env.APP_DATABASE_URL = env.DATABASE_URL
  try {
    const config = loadConfig(env)
    return ownerAlone ? { ...config, APP_DATABASE_URL: undefined } : config
  } catch (error) {
    if (error instanceof ConfigError) throw usageError(error.message)
    throw error
  }
}

/** This machine only: what reaches these never crosses a network (the same test as for database hosts). */
export function isLoopback (url: URL): boolean {
  return isLoopbackHost(url.hostname.replace(/^\[(.*)\]$/, '$1'))
}

function parseUrl (url: string): URL {
  let parsed: URL | undefined
  try {
    parsed = new URL(url)
  } catch {
    parsed = undefined // reported below, as any other URL that is not http(s)
  }
  if (parsed === undefined || !['http:', 'https:'].includes(parsed.protocol) || parsed.hostname === '') {
    throw usageError(`the server URL must be an http:// or https:// URL, got ${JSON.stringify(url)}`)
  }
  return parsed
}

/** The token the operator gave (an option or the environment), and where it came from. */
async function givenToken (context: RunContext): Promise<{ token: string, source: string } | undefined> {
  const inline = context.string('token')
  const file = context.string('token-file')
  if (inline !== undefined && file !== undefined) throw usageError('give --token or --token-file, not both')
  if (file !== undefined) {
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw usageError(`cannot read --token-file ${file}: ${error.code ?? error.message}`)
    })
    if (text.trim() === '') throw usageError(`--token-file ${file} is empty`)
    return { token: text.trim(), source: `from ${file}` }
  }
  const explicit: Array<[string, string | undefined]> = [
    ['--token', inline],
    ['ROWFENCE_ADMIN_TOKEN', nonEmpty(process.env.ROWFENCE_ADMIN_TOKEN)],
    ['ADMIN_TOKEN', nonEmpty(process.env.ADMIN_TOKEN)],
  ]
  const found = explicit.find(([, value]) => value !== undefined)
  return found === undefined ? undefined : { token: found[1]!, source: `from ${found[0]}` }
}

/** The recorded server; a record this user cannot vouch for is refused, in one line, rather than used. */
async function recordedServer (dataDir: string): Promise<ServerRecord | undefined> {
  try {
    return await readServerRecord(dataDir)
  } catch (error) {
    if (!(error instanceof UntrustedFile)) throw error
    throw failureError(`${error.message}: remove it (npm start writes it anew) or pass --url`)
  }
}

/**
 * The operator API. Only DATA_DIR is read of the server's configuration (not validated as a whole: an
 * operator's shell need not hold the server's production settings to call its API).
 */
export async function operatorApi (context: RunContext): Promise<OperatorApi> {
  const dataDir = path.resolve(nonEmpty(process.env.DATA_DIR) ?? '.data')
  const given = context.string('url') ?? nonEmpty(process.env.ROWFENCE_URL)
  const record = given === undefined ? await recordedServer(dataDir) : undefined
  const url = given ?? record?.url
  if (url === undefined) {
    throw failureError(`no server to talk to: no running server is recorded in ${serverRecordFile(dataDir)} ` +
      '(start one with npm start), and neither --url nor ROWFENCE_URL is set')
  }
  const parsed = parseUrl(url)
  let credential = await givenToken(context)
  if (credential === undefined) {
    if (record === undefined) {
      throw usageError(`no operator token for ${url}: set ROWFENCE_ADMIN_TOKEN, or pass --token-file or --token`)
    }
    if (record.admin_token_file === null) {
      throw usageError(`the server at ${url} uses a configured ADMIN_TOKEN: set ROWFENCE_ADMIN_TOKEN, ` +
        'or pass --token-file or --token')
    }
    // The generated token is for the server on this machine: a record naming another host is not followed.
    if (!isLoopback(parsed)) {
      throw usageError(`the recorded server ${url} is not on this machine (loopback): its generated token is ` +
        'sent only to 127.0.0.1, ::1 or localhost; pass --url with ROWFENCE_ADMIN_TOKEN or --token-file')
    }
    const file = record.admin_token_file
    const text = await readOwnFile(file).catch((error: unknown) => {
      if (error instanceof UntrustedFile) throw failureError(error.message)
      const { code, message } = error as NodeJS.ErrnoException
      throw failureError(`cannot read the operator token ${file}: ${code ?? message}`)
    })
    if (text === undefined || text.trim() === '') throw failureError(`the operator token ${file} is missing or empty`)
    credential = { token: text.trim(), source: `from ${file}` }
  }
  if (parsed.protocol === 'http:' && !isLoopback(parsed) && !context.flag('insecure-http')) {
    throw usageError(`refusing to send the operator token in cleartext to ${url}: use https://, or pass ` +
      '--insecure-http if the network between is trusted')
  }
  return new OperatorApi(url, credential.token, credential.source)
}

function nonEmpty (value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value
}

export interface DatabaseTarget {
  config: Config
  /** DATABASE_URL: the owner. */
  ownerUrl: string
  /** APP_DATABASE_URL: the runtime role (undefined when only the owner was asked for and given). */
  appUrl: string | undefined
  tls: DatabaseTls
  /** Stops the embedded PostgreSQL when this command started it; nothing otherwise. */
  close: () => Promise<void>
}

export async function openDatabase (out: Output, options: { runtimeRole?: boolean } = {}): Promise<DatabaseTarget> {
  const config = environment({ ownerAlone: options.runtimeRole !== true })
  const tls = databaseTls(config)
  const nothing = async (): Promise<void> => {}
  if (config.DATABASE_URL !== undefined) {
    return { config, ownerUrl: config.DATABASE_URL, appUrl: config.APP_DATABASE_URL, tls, close: nothing }
  }
  const dataDir = path.resolve(config.DATA_DIR)
  const attach = async (): Promise<DatabaseTarget | undefined> => {
    const running = await attachEmbedded(dataDir)
    if (running === undefined) return undefined
    out.note(`using the embedded PostgreSQL already running on ${dataDir} (port ${running.port})`)
    return { config, ownerUrl: running.ownerUrl, appUrl: running.appUrl, tls, close: nothing }
  }
  const attached = await attach()
  if (attached !== undefined) return attached
  out.note(`no DATABASE_URL and nothing running on ${dataDir}: starting the embedded PostgreSQL for this command`)
  try {
    const embedded = await startEmbedded({ dataDir, port: config.EMBEDDED_PG_PORT })
    return { config, ownerUrl: embedded.ownerUrl, appUrl: embedded.appUrl, tls, close: embedded.stop }
  } catch (error) {
    // Another process started it meanwhile: use that one.
    if (error instanceof EmbeddedInUse) {
      const late = await attach()
      if (late !== undefined) return late
    }
    throw error
  }
}
