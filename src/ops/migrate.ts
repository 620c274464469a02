import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { runMigrations } from 'graphile-worker'
import pg from 'pg'
import { lineQueueLogger } from '../jobs/queue-logger.ts'
import { connectionOptions, PLAINTEXT, type DatabaseTls } from '../db/tls.ts'
import { lineFailureLog, logFailure } from '../log-failure.ts'

export const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url))

/** Any lock id works as long as every migrator uses the same one. */
const MIGRATION_LOCK_ID = 7_245_104_001

export class MigrationError extends Error {
  override name = 'MigrationError'
}

/**
 * The job queue's own schema (graphile_worker), installed and upgraded by the library as the owner,
 * before our files: they grant the runtime role its narrow share of it and enqueue into it.
 */
async function installJobQueue (databaseUrl: string, tls: DatabaseTls, log: (line: string) => void): Promise<void> {
  const pool = new pg.Pool({ ...connectionOptions(databaseUrl, tls), max: 1, application_name: 'rowfence-migrate' })
  // An idle connection's error (the server went away) surfaces in the next query; not a crash.
  const failed = logFailure(lineFailureLog(log), 'job queue migration connection')
  pool.on('error', failed)
  pool.on('connect', (client) => { client.on('error', failed) })
  try {
    await runMigrations({ pgPool: pool, logger: lineQueueLogger(log) })
  } finally {
    await pool.end()
  }
}

export interface MigrationFile {
  version: string
  name: string
  sql: string
  checksum: string
}

export interface MigrationResult {
  applied: string[]
  alreadyApplied: number
}

/** Migration files are `NNNN_name.sql`; anything else in the folder (README.md) is ignored. */
const FILE_PATTERN = /^(\d{4,})_([a-z0-9_]+)\.sql$/

export async function readMigrations (dir: string = SQL_DIR): Promise<MigrationFile[]> {
  const names = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort()
  const files: MigrationFile[] = []
  for (const file of names) {
    const match = FILE_PATTERN.exec(file)
    if (match === null) throw new MigrationError(`sql/${file}: migration files must be named NNNN_lower_snake_name.sql`)
    const sql = await readFile(path.join(dir, file), 'utf8')
    files.push({ version: match[1]!, name: file, sql, checksum: createHash('sha256').update(sql).digest('hex') })
  }
  const seen = new Set<string>()
  for (const f of files) {
    if (seen.has(f.version)) throw new MigrationError(`sql/${f.name}: version ${f.version} is used by two files`)
    seen.add(f.version)
  }
  return files
}

/**
 * Applies pending migrations in order, each in its own transaction, as whichever role the URL
 * logs in as (the owner). A session-level advisory lock serialises concurrent migrators: the
 * second one waits, then finds nothing left to do. Files already applied are verified against
 * their stored checksum first, so an edited migration stops everything before any change.
 */
export async function migrate (
  databaseUrl: string,
  options: { dir?: string, log?: (line: string) => void, tls?: DatabaseTls } = {}
): Promise<MigrationResult> {
  const log = options.log ?? (() => {})
  const failures = lineFailureLog(log)
  const files = await readMigrations(options.dir)
  const client = new pg.Client({
    ...connectionOptions(databaseUrl, options.tls ?? PLAINTEXT), application_name: 'rowfence-migrate',
  })
  await client.connect()
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_ID])
    try {
      await installJobQueue(databaseUrl, options.tls ?? PLAINTEXT, log)
      await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version     text PRIMARY KEY,
        name        text NOT NULL,
        checksum    text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now(),
        duration_ms integer NOT NULL
      )`)
      const { rows } = await client.query<{ version: string, name: string, checksum: string }>(
        'SELECT version, name, checksum FROM schema_migrations ORDER BY version'
      )
      const byVersion = new Map(files.map((f) => [f.version, f]))
      for (const row of rows) {
        const file = byVersion.get(row.version)
        if (file === undefined) {
          throw new MigrationError(
            `migration ${row.name} is recorded as applied but sql/${row.name} is missing; restore the file`)
        }
        if (file.checksum !== row.checksum) {
          throw new MigrationError(
            `sql/${file.name} was edited after it was applied (checksum ${row.checksum.slice(0, 12)} recorded, ` +
            `${file.checksum.slice(0, 12)} on disk); applied migrations are frozen: ` +
            'revert the edit and add a new migration'
          )
        }
      }
      const done = new Set(rows.map((r) => r.version))
      const pending = files.filter((f) => !done.has(f.version))
      const lastApplied = rows.at(-1)?.version
      const outOfOrder = pending.find((f) => lastApplied !== undefined && f.version < lastApplied)
      if (outOfOrder !== undefined) {
        throw new MigrationError(
          `sql/${outOfOrder.name} sorts before the already applied ${lastApplied}; give it a later number`)
      }
      const applied: string[] = []
      for (const file of pending) {
        const started = Date.now()
        await client.query('BEGIN')
        try {
          await client.query(file.sql)
          await client.query(
            'INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES ($1, $2, $3, $4)',
            [file.version, file.name, file.checksum, Date.now() - started]
          )
          await client.query('COMMIT')
        } catch (error) {
          // The migration's own error is the one thrown; the server rolls back when the session ends.
          await client.query('ROLLBACK').catch(logFailure(failures, `rolling back sql/${file.name}`))
          const detail = error instanceof Error ? error.message : String(error)
          throw new MigrationError(`sql/${file.name} failed and was rolled back: ${detail}`)
        }
        applied.push(file.name)
        log(`applied ${file.name} (${Date.now() - started} ms)`)
      }
      return { applied, alreadyApplied: rows.length }
    } finally {
      // A session lock: it ends with the session, which ends right below whatever happens here.
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_ID])
        .catch(logFailure(failures, 'releasing the migration lock'))
    }
  } finally {
    await client.end()
  }
}
