import { createReadStream, createWriteStream, type ReadStream, type WriteStream } from 'node:fs'
import { once } from 'node:events'
import { rename, rm, stat } from 'node:fs/promises'
import type pg from 'pg'
import type { OperationLock } from '../tenancy/operation-lock.ts'
import type { Placement } from '../tenancy/shards.ts'
import type { ImportResult } from '../tenancy/tenant-import.ts'
import { DATABASE_HELP, isUuid, type Command } from './command.ts'
import { failureError, notFoundError, refusedError, usageError } from './output.ts'
import type { DatabaseTarget } from './target.ts'

/** The database side, loaded when a command runs: --help and usage errors answer without it. */
async function load () {
  const [
    { default: pg }, { connectionOptions, tlsFailure }, { migrate }, { MISSING_KEY, resolveExportSigningKey },
    { OperationLock }, shards, { exportTenant, TenantNotFound }, { ImportError, importTenant }, { rowProgress },
    { openDatabase }, { createDatabase }, { findTenantBySlug },
  ] = await Promise.all([
    import('pg'), import('../db/tls.ts'), import('../ops/migrate.ts'), import('../tenancy/export-signature.ts'),
    import('../tenancy/operation-lock.ts'), import('../tenancy/shards.ts'), import('../tenancy/tenant-export.ts'),
    import('../tenancy/tenant-import.ts'), import('./progress.ts'), import('./target.ts'), import('../db/database.ts'),
    import('../repositories/tenants.ts'),
  ])
  return {
    pg,
    connectionOptions,
    tlsFailure,
    migrate,
    MISSING_KEY,
    resolveExportSigningKey,
    OperationLock,
    shards,
    exportTenant,
    TenantNotFound,
    ImportError,
    importTenant,
    rowProgress,
    openDatabase,
    createDatabase,
    findTenantBySlug,
  }
}
type Loaded = Awaited<ReturnType<typeof load>>

/** Runs work with the database, mapping a TLS handshake failure to its one-line reason. */
async function withDatabase<T> (lib: Loaded, target: DatabaseTarget, work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (error) {
    throw lib.tlsFailure(error, target.tls) ?? error
  } finally {
    await target.close()
  }
}

interface ExportOutput {
  sink: WriteStream | NodeJS.WriteStream
  /** Flushes and closes the file, and gives it its name. */
  finish: () => Promise<void>
  /** Closes and removes what was written (a regular file's partial copy). */
  abandon: () => Promise<void>
}

/**
 * Where an export goes: stdout, or FILE. A regular file is written under a temporary name (mode 0600: it
 * holds a tenant's data) and renamed once complete, so that a failed export leaves nothing that looks like
 * one; anything else (/dev/null, a pipe) is written as it is. Opened before the database, so that a path
 * that cannot be written fails at once.
 */
export async function openOutput (file: string | undefined): Promise<ExportOutput> {
  if (file === undefined) return { sink: process.stdout, finish: async () => {}, abandon: async () => {} }
  const existing = await stat(file).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined // a new file: written under a temporary name
    throw usageError(`cannot write ${file}: ${error.code ?? error.message}`)
  })
  const partial = existing !== undefined && !existing.isFile() ? undefined : `${file}.partial`
  const target = partial ?? file
  const sink = createWriteStream(target, { mode: 0o600 })
  await once(sink, 'open').catch((error: NodeJS.ErrnoException) => {
    throw usageError(`cannot write ${target}: ${error.code ?? error.message}`)
  })
  return {
    sink,
    finish: async () => {
      sink.end()
      await once(sink, 'finish')
      if (partial !== undefined) await rename(partial, file)
    },
    abandon: async () => {
      // A write still in flight fails once the stream is destroyed: of a copy being thrown away, so not reported.
      sink.on('error', () => {})
      sink.destroy()
      if (partial !== undefined) await rm(partial, { force: true })
    },
  }
}

const exportCommand: Command = {
  name: 'export',
  summary: 'Export every row of a tenant as signed NDJSON (stdout, or --out FILE), with a progress bar on stderr.',
  usage: '<tenant-id|slug> [--out FILE]',
  help: 'One consistent snapshot, constant memory, signed with EXPORT_SIGNING_KEY (generated into DATA_DIR ' +
    'outside production) so that `rowfence import` can verify it. With --out the file is written under a ' +
    'temporary name (mode 0600) and renamed once complete. The summary goes to stderr; --json (which needs --out: ' +
    'stdout carries the export otherwise) prints it as a document on stdout.\n' +
    DATABASE_HELP,
  options: {
    out: { type: 'string', value: 'FILE', description: 'write the export to FILE instead of stdout' },
    tenant: {
      type: 'string', value: 'ID', description: 'the tenant (id or slug), as an option (as `npm run export` took it)',
    },
  },
  args: { min: 0, max: 1 },
  target: 'database',
  run: async ({ args, string, out }) => {
    if (args[0] !== undefined && string('tenant') !== undefined) throw usageError('name the tenant once')
    const given = args[0] ?? string('tenant')
    if (given === undefined) {
      throw usageError('the tenant is required: rowfence export <tenant-id|slug> [--out FILE]')
    }
    // Checked before anything is opened: a typo must not start a database. A slug is looked up there.
    const [{ CreateTenantSchema }, { Value }] = await Promise.all([
      import('../schemas/tenants.ts'), import('@sinclair/typebox/value'),
    ])
    const slug = isUuid(given) ? undefined : given
    if (slug !== undefined && !Value.Check(CreateTenantSchema.properties.slug, slug)) {
      throw usageError(`the tenant must be an id (a UUID) or a slug, got ${JSON.stringify(given)}`)
    }
    let tenantId = given.toLowerCase()
    const file = string('out')
    if (out.json && file === undefined) throw usageError('--json needs --out FILE: stdout carries the export')
    const output = await openOutput(file)
    const lib = await load()
    const progress = lib.rowProgress('export')
    let lines = 0
    let tables: Record<string, number> = {}
    try {
      const database = await lib.openDatabase(out)
      await withDatabase(lib, database, async () => {
        const key = await lib.resolveExportSigningKey(database.config)
        if (key === undefined) throw failureError(lib.MISSING_KEY)
        const pool = new lib.pg.Pool({
          ...lib.connectionOptions(database.ownerUrl, database.tls), max: 1, application_name: 'rowfence-export',
        })
        try {
          if (slug !== undefined) {
            const tenant = await lib.findTenantBySlug(lib.createDatabase(pool), slug)
            if (tenant === undefined) throw notFoundError(`no tenant with slug ${slug}`)
            tenantId = tenant.id
          }
          const stream = lib.exportTenant(pool, tenantId, key, (plan) => {
            tables = Object.fromEntries(plan.tables.map((t) => [t.name, t.rows]))
            progress.start(plan.total)
          })
          for await (const line of stream) {
            if (!output.sink.write(line)) await once(output.sink, 'drain')
            if (++lines % 1000 === 0) progress.update(lines)
          }
        } finally {
          await pool.end()
        }
      })
      // The last line is the signature trailer, not a row.
      progress.update(lines - 1)
      progress.stop()
      await output.finish()
    } catch (error) {
      progress.stop()
      await output.abandon()
      if (error instanceof lib.TenantNotFound) throw notFoundError(error.message)
      throw error
    }
    const rows = lines - 1
    const peakMb = (process.resourceUsage().maxRSS / 1024).toFixed(1)
    const summary = `exported ${rows} rows of tenant ${tenantId}${file === undefined ? '' : ` to ${file}`} ` +
      `(peak RSS ${peakMb} MB)`
    // On stderr, as the progress: stdout is the export's, or (--json) the document's alone.
    if (out.json) out.result([], { tenant_id: tenantId, file, rows, tables })
    else process.stderr.write(`${summary}\n`)
  },
}

const importCommand: Command = {
  name: 'import',
  summary: 'Load a tenant from an export into this deployment, in one transaction, with a progress bar on stderr.',
  usage: '<FILE> [--placement pooled|dedicated] [--allow-unsigned]',
  help: 'The tenant must not exist here yet. The whole file\'s signature is checked with EXPORT_SIGNING_KEY ' +
    'before anything is written; --allow-unsigned also takes an export from before exports were signed, which ' +
    'nothing vouches for. A refused file (altered, unsigned, a tenant that exists) exits with 4. Migrates the ' +
    'database first.\n' + DATABASE_HELP,
  options: {
    placement: { type: 'string', value: 'pooled|dedicated', description: 'where the tenant lives (default pooled)' },
    'allow-unsigned': { type: 'boolean', description: 'accept an export without a signature (warns)' },
    file: { type: 'string', value: 'FILE', description: 'the export, as an option (as `npm run import` took it)' },
  },
  args: { min: 0, max: 1 },
  target: 'database',
  run: async ({ args, string, flag, out }) => {
    if (args[0] !== undefined && string('file') !== undefined) throw usageError('name the file once')
    const file = args[0] ?? string('file')
    if (file === undefined) throw usageError('the export FILE is required: rowfence import <FILE>')
    const placementValue = string('placement') ?? 'pooled'
    if (placementValue !== 'pooled' && placementValue !== 'dedicated') {
      throw usageError('--placement must be pooled or dedicated')
    }
    const placement: Placement = placementValue
    const allowUnsigned = flag('allow-unsigned')
    await stat(file).catch((error: NodeJS.ErrnoException) => {
      throw usageError(`cannot read ${file}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`)
    })
    const lib = await load()
    const database = await lib.openDatabase(out)
    const signingKey = await lib.resolveExportSigningKey(database.config)
    // Without a key only an unsigned export, knowingly let in, can be read: refuse now, not after a first pass.
    if (signingKey === undefined && !allowUnsigned) {
      await database.close()
      throw failureError(lib.MISSING_KEY)
    }
    const result = await withDatabase(lib, database, async () => {
      await lib.migrate(database.ownerUrl, { tls: database.tls })
      const pool = new lib.pg.Pool({
        ...lib.connectionOptions(database.ownerUrl, database.tls), max: 1, application_name: 'rowfence-import',
      })
      try {
        return await importInto(lib, pool, file, placement, { signingKey, allowUnsigned })
      } finally {
        await pool.end()
      }
    })
    const total = Object.values(result.rows).reduce((sum, n) => sum + n, 0)
    const perTable = Object.entries(result.rows).map(([table, n]) => `${table} ${n}`).join(', ')
    out.result(`imported tenant ${result.tenantId} (${placement}): ${total} rows (${perTable})`, {
      tenant_id: result.tenantId, placement, signed: result.signed, rows: result.rows,
    })
  },
}

/**
 * The import proper. A dedicated shard's partitions are created in a short DDL transaction of their own
 * (the shared tables are never locked for the length of the import), reserved for the tenant, and claimed
 * by the import's transaction: if the import fails, they are removed (or left to the next sweep).
 */
async function importInto (
  lib: Loaded, pool: pg.Pool, file: string, placement: Placement,
  keys: { signingKey: string | undefined, allowUnsigned: boolean }
): Promise<ImportResult> {
  const { claimShard, createShard, pooledShardFor, releaseShard } = lib.shards
  // Opened once to check the signature, then again to import.
  let input: ReadStream | undefined
  const open = (): ReadStream => { input = createReadStream(file); return input }
  const progress = lib.rowProgress('import')
  let rows = 0
  let lines = 0
  let lock: OperationLock | undefined
  let shard: number | undefined
  try {
    const result = await lib.importTenant(pool, open, async (client, tenantId) => {
      if (placement === 'pooled') return { shard: await pooledShardFor(client, tenantId), placement }
      lock = await lib.OperationLock.tryAcquire(pool, tenantId)
      if (lock === undefined) throw refusedError(`another operation on tenant ${tenantId} is in progress here`)
      shard = await createShard(lock.client, tenantId, 'import')
      await claimShard(client, shard)
      return { shard, placement }
    }, {
      ...keys,
      onVerified: (check) => {
        if (!check.signed) {
          process.stderr.write('rowfence import: warning: the export is not signed (--allow-unsigned): ' +
            'nothing vouches for its content\n')
        }
        lines = check.lines
        progress.start(lines)
      },
      onRows: (n) => { rows += n; progress.update(rows) },
    })
    // Every line is in, the audit chain head among them (rebuilt by a trigger, not inserted: onRows skips it).
    progress.update(lines)
    progress.stop()
    shard = undefined // claimed by the committed import: no longer ours to release
    return result
  } catch (error) {
    progress.stop()
    if (error instanceof lib.ImportError) throw refusedError(error.message)
    throw error
  } finally {
    input?.destroy()
    const held = lock as OperationLock | undefined
    if (held !== undefined && shard !== undefined) {
      await releaseShard(held.client, shard).catch((releaseError: unknown) => {
        process.stderr.write(`rowfence import: the partitions of shard ${shard} are left for the next sweep ` +
          `(${(releaseError as Error).message})\n`)
      })
    }
    await held?.release()
  }
}

export const dataCommands: Command[] = [exportCommand, importCommand]
