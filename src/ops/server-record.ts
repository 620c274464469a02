import { constants, readFileSync, unlinkSync, type Stats } from 'node:fs'
import { lstat, mkdir, open, rename, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'

/**
 * DATA_DIR/server.json: how to reach the server serving from this data folder, so that `npx rowfence`
 * finds it with no flags. Written (mode 0600) once the server listens, removed when it stops. It holds
 * no secret: the operator token stays in its own file (adminTokenFile), named here only when generated.
 */
export interface ServerRecord {
  url: string
  pid: number
  started_at: string
  /** The generated operator token's file; null when ADMIN_TOKEN was configured. */
  admin_token_file: string | null
}

export const serverRecordFile = (dataDir: string): string => path.join(path.resolve(dataDir), 'server.json')

/** The one operator token file a record may name: the token the server generated in its data folder. */
export const adminTokenFileOf = (dataDir: string): string => path.join(path.resolve(dataDir), 'admin-token')

/**
 * A file this user cannot vouch for: whoever else could write it could point the CLI at another host
 * (server.json) or choose what it sends (admin-token).
 */
export class UntrustedFile extends Error {
  override name = 'UntrustedFile'
}

function untrustedBecause (stats: Stats): string | undefined {
  if (!stats.isFile()) return 'it is not a regular file'
  // Without uids (Windows) neither owner nor mode bits say anything: only the symlink check applies there.
  const uid = process.getuid?.()
  if (uid === undefined) return undefined
  if (stats.uid !== uid) return `it belongs to uid ${stats.uid}, not to this user (uid ${uid})`
  if ((stats.mode & 0o022) !== 0) {
    return `it is writable by group or others (mode ${(stats.mode & 0o777).toString(8).padStart(4, '0')})`
  }
  return undefined
}

/**
 * The content of a file only this user could have written; undefined when there is none. Refuses a
 * symlink (lstat), and reads through a descriptor opened without following one and checked again
 * (fstat), so that a file swapped in between the check and the read is refused too.
 */
export async function readOwnFile (file: string): Promise<string | undefined> {
  let link: Stats
  try {
    link = await lstat(file)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
  if (link.isSymbolicLink()) throw new UntrustedFile(`refusing ${file}: it is a symbolic link`)
  // O_NONBLOCK: a FIFO put there must not hold the open forever (it is refused as not a regular file).
  const flags = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0)
  const handle = await open(file, flags).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ELOOP') throw new UntrustedFile(`refusing ${file}: it is a symbolic link`)
    throw error
  })
  try {
    const stats = await handle.stat()
    const replaced = stats.ino !== link.ino || stats.dev !== link.dev
    const why = replaced ? 'it was replaced while being read' : untrustedBecause(stats)
    if (why !== undefined) throw new UntrustedFile(`refusing ${file}: ${why}`)
    return await handle.readFile('utf8')
  } finally {
    await handle.close()
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * The record of a live server on this data folder; undefined when none, or the process named is gone.
 * Throws UntrustedFile for a record this user did not write (see readOwnFile) or one that names any
 * token file but the folder's own admin-token: the CLI sends that token to the URL the record names.
 */
export async function readServerRecord (dataDir: string): Promise<ServerRecord | undefined> {
  const file = serverRecordFile(dataDir)
  const text = await readOwnFile(file)
  if (text === undefined) return undefined
  let record: Partial<ServerRecord>
  try {
    record = JSON.parse(text) as Partial<ServerRecord>
  } catch {
    return undefined // being written (the write renames a whole file into place, so hardly ever)
  }
  if (typeof record.url !== 'string' || typeof record.pid !== 'number' || !alive(record.pid)) return undefined
  const tokenFile = record.admin_token_file ?? null
  if (tokenFile !== null && tokenFile !== adminTokenFileOf(dataDir)) {
    throw new UntrustedFile(`refusing ${file}: it names ${JSON.stringify(tokenFile)} as the operator token, ` +
      `not ${adminTokenFileOf(dataDir)}`)
  }
  return { url: record.url, pid: record.pid, started_at: String(record.started_at), admin_token_file: tokenFile }
}

export interface RecordedServer {
  /** Removes the record, if it is still this process's (synchronous: it also runs on 'exit'). */
  remove: () => void
}

/**
 * Writes this process's record. Best effort: a data folder that cannot be written (a read-only image)
 * is reported with `log` and the server serves all the same; the CLI then needs --url.
 */
export async function writeServerRecord (
  dataDir: string,
  server: {
    url: string
    adminTokenFile: string | undefined
    /** This server runs the folder's embedded database, which locks the folder: no other can be serving from it. */
    ownsFolder: boolean
  },
  log: (line: string) => void
): Promise<RecordedServer> {
  const file = serverRecordFile(dataDir)
  const record: ServerRecord = {
    url: server.url,
    pid: process.pid,
    started_at: new Date().toISOString(),
    admin_token_file: server.adminTokenFile ?? null,
  }
  // Two servers share a data folder only with a configured database (nothing locks the folder then):
  // the first keeps the record, so that a second one (a test's, say) does not take the CLI away from it.
  // A server that owns the folder overwrites whatever is there (a dead server's record, its pid reused).
  const other = server.ownsFolder
    ? undefined
    : await readServerRecord(dataDir).catch((error: unknown) => {
      log(`could not read ${file}, writing it anew: ${(error as Error).message}`)
      return undefined
    })
  if (other !== undefined && other.pid !== process.pid) {
    log(`not recording this server in ${file}: it names the server of pid ${other.pid} (${other.url})`)
    return { remove: () => {} }
  }
  try {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o711 })
    const partial = `${file}.${process.pid}.tmp`
    // Created afresh ('wx' after removing any leftover): never written through a link someone put there.
    await rm(partial, { force: true })
    await writeFile(partial, JSON.stringify(record, null, 2) + '\n', { mode: 0o600, flag: 'wx' })
    await rename(partial, file)
  } catch (error) {
    log(`could not write ${file} (npx rowfence will need --url): ${(error as Error).message}`)
    return { remove: () => {} }
  }
  const remove = (): void => {
    process.off('exit', remove)
    try {
      const current = JSON.parse(readFileSync(file, 'utf8')) as Partial<ServerRecord>
      // Another server started on this folder since (with a configured database, nothing locks it).
      if (current.pid === process.pid) unlinkSync(file)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        log(`could not remove ${file}: ${(error as Error).message}`)
      }
    }
  }
  process.once('exit', remove)
  return { remove }
}
