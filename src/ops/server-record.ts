import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { readFileSync, unlinkSync } from 'node:fs'
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

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The record of a live server on this data folder; undefined when none, or the process named is gone. */
export async function readServerRecord (dataDir: string): Promise<ServerRecord | undefined> {
  let text: string
  try {
    text = await readFile(serverRecordFile(dataDir), 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
  let record: Partial<ServerRecord>
  try {
    record = JSON.parse(text) as Partial<ServerRecord>
  } catch {
    return undefined // being written (the write renames a whole file into place, so hardly ever)
  }
  if (typeof record.url !== 'string' || typeof record.pid !== 'number' || !alive(record.pid)) return undefined
  return {
    url: record.url,
    pid: record.pid,
    started_at: String(record.started_at),
    admin_token_file: typeof record.admin_token_file === 'string' ? record.admin_token_file : null,
  }
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
    await writeFile(partial, JSON.stringify(record, null, 2) + '\n', { mode: 0o600 })
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
