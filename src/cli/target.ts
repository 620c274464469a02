import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { ConfigError, loadConfig, type Config } from '../config.ts'
import { databaseTls, type DatabaseTls } from '../db/tls.ts'
import { attachEmbedded, EmbeddedInUse, startEmbedded } from '../ops/embedded.ts'
import { readServerRecord, serverRecordFile } from '../ops/server-record.ts'
import { OperatorApi } from './api.ts'
import type { RunContext } from './command.ts'
import { failureError, usageError, type Output } from './output.ts'

/**
 * How the CLI reaches what it works on.
 *
 * The operator API (tenants, keys): --url, else ROWFENCE_URL, else the server that `npm start` recorded
 * in DATA_DIR/server.json (while its process lives); the token from --token, ROWFENCE_ADMIN_TOKEN or
 * ADMIN_TOKEN, else — for the recorded server only, never for a URL given by hand — its generated token file.
 *
 * The database (export, import, check, migrate): DATABASE_URL and APP_DATABASE_URL when set; else the
 * embedded cluster in DATA_DIR — the running one when a PostgreSQL holds the folder (a running `npm start`,
 * or another command), reached with the secrets it was created with; else one this command starts and stops.
 * Never a second PostgreSQL on a locked folder.
 */

/** The configuration from the environment; a bad value is a usage error. */
export function environment (): Config {
  try {
    return loadConfig()
  } catch (error) {
    if (error instanceof ConfigError) throw usageError(error.message)
    throw error
  }
}

/**
 * The operator API. Only DATA_DIR is read of the server's configuration (not validated as a whole: an
 * operator's shell need not hold the server's production settings to call its API).
 */
export async function operatorApi (context: RunContext): Promise<OperatorApi> {
  const dataDir = path.resolve(nonEmpty(process.env.DATA_DIR) ?? '.data')
  const given = context.string('url') ?? nonEmpty(process.env.ROWFENCE_URL)
  const record = given === undefined ? await readServerRecord(dataDir) : undefined
  const url = given ?? record?.url
  if (url === undefined) {
    throw failureError(`no server to talk to: no running server is recorded in ${serverRecordFile(dataDir)} ` +
      '(start one with npm start), and neither --url nor ROWFENCE_URL is set')
  }
  if (!/^https?:\/\/[^/]/.test(url)) {
    throw usageError(`--url must be an http:// or https:// URL, got ${JSON.stringify(url)}`)
  }
  const explicit: Array<[string, string | undefined]> = [
    ['--token', context.string('token')],
    ['ROWFENCE_ADMIN_TOKEN', nonEmpty(process.env.ROWFENCE_ADMIN_TOKEN)],
    ['ADMIN_TOKEN', nonEmpty(process.env.ADMIN_TOKEN)],
  ]
  const found = explicit.find(([, value]) => value !== undefined)
  if (found !== undefined) return new OperatorApi(url, found[1]!, `from ${found[0]}`)
  if (record === undefined) {
    throw usageError(`no operator token for ${url}: pass --token or set ROWFENCE_ADMIN_TOKEN`)
  }
  if (record.admin_token_file === null) {
    throw usageError(`the server at ${url} uses a configured ADMIN_TOKEN: pass --token or set ROWFENCE_ADMIN_TOKEN`)
  }
  const token = (await readFile(record.admin_token_file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw failureError(`cannot read the operator token ${record.admin_token_file}: ${error.code ?? error.message}`)
  })).trim()
  return new OperatorApi(url, token, `from ${record.admin_token_file}`)
}

function nonEmpty (value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value
}

export interface DatabaseTarget {
  config: Config
  /** DATABASE_URL: the owner. */
  ownerUrl: string
  /** APP_DATABASE_URL: the runtime role. */
  appUrl: string
  tls: DatabaseTls
  /** Stops the embedded PostgreSQL when this command started it; nothing otherwise. */
  close: () => Promise<void>
}

export async function openDatabase (out: Output): Promise<DatabaseTarget> {
  const config = environment()
  const tls = databaseTls(config)
  const nothing = async (): Promise<void> => {}
  if (config.DATABASE_URL !== undefined) {
    return { config, ownerUrl: config.DATABASE_URL, appUrl: config.APP_DATABASE_URL!, tls, close: nothing }
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
