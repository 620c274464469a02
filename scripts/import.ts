// npm run import -- --file EXPORT.ndjson [--placement pooled|dedicated] [--allow-unsigned]
// Loads a tenant exported by `npm run export` (or GET /admin/v1/tenants/:id/export) into this
// deployment, in one transaction: all of it or nothing. The tenant must not exist here yet. The whole
// file's signature is checked with EXPORT_SIGNING_KEY first; --allow-unsigned also takes an export
// from before exports were signed, which nothing vouches for.
import { createReadStream, type ReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import cliProgress from 'cli-progress'
import pg from 'pg'
import { loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { MISSING_KEY, resolveExportSigningKey } from '../src/tenancy/export-signature.ts'
import { migrate } from '../src/ops/migrate.ts'
import { claimShard, createShard, OperationLock, pooledShardFor, releaseShard, type Placement } from '../src/tenancy/placement.ts'
import { importTenant } from '../src/tenancy/tenant-data.ts'
import { connectionOptions, databaseTls, tlsFailure, type DatabaseTls } from '../src/db/tls.ts'

let tls: DatabaseTls | undefined

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      file: { type: 'string' },
      placement: { type: 'string', default: 'pooled' },
      'allow-unsigned': { type: 'boolean', default: false },
    },
  })
  const allowUnsigned = values['allow-unsigned']
  if (values.file === undefined) throw new Error('--file <export.ndjson> is required')
  if (values.placement !== 'pooled' && values.placement !== 'dedicated') throw new Error('--placement must be pooled or dedicated')
  const placement: Placement = values.placement
  const file = values.file
  const size = await stat(file).then((s) => s.size, (error: NodeJS.ErrnoException) => {
    throw new Error(`cannot read --file ${file}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`)
  })
  const config = loadConfig()
  const signingKey = await resolveExportSigningKey(config)
  // Without a key only an unsigned export, knowingly let in, can be read: refuse now rather than after a first pass.
  if (signingKey === undefined && !allowUnsigned) throw new Error(MISSING_KEY)
  tls = databaseTls(config)
  const embedded = config.DATABASE_URL === undefined ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT }) : undefined
  const ownerUrl = embedded?.ownerUrl ?? config.DATABASE_URL!
  await migrate(ownerUrl, { tls })
  const pool = new pg.Pool({ ...connectionOptions(ownerUrl, tls), max: 1, application_name: 'rowfence-import' })
  // Opened once to check the signature, then again to import.
  let input: ReadStream | undefined
  const open = (): ReadStream => { input = createReadStream(file); return input }
  // On stderr; outside a terminal (a log, CI) as a line every few seconds.
  const bar = new cliProgress.SingleBar({ format: 'import {bar} {percentage}% of the file | {rows} rows', stream: process.stderr, noTTYOutput: true, notTTYSchedule: 2000 }, cliProgress.Presets.shades_classic)
  let rows = 0
  // A dedicated shard's partitions are created in a short DDL transaction of their own (the shared
  // tables are never locked for the length of the import), reserved for the tenant, and claimed by
  // the import's transaction: if the import fails, they are removed (or left to the next sweep).
  let lock: OperationLock | undefined
  let shard: number | undefined
  let ok = false
  try {
    const result = await importTenant(pool, open, async (client, tenantId) => {
      if (placement === 'pooled') return { shard: await pooledShardFor(client, tenantId), placement }
      lock = await OperationLock.tryAcquire(pool, tenantId)
      if (lock === undefined) throw new Error(`another operation on tenant ${tenantId} is in progress here`)
      shard = await createShard(lock.client, tenantId, 'import')
      await claimShard(client, shard)
      return { shard, placement }
    }, {
      signingKey,
      allowUnsigned,
      onVerified: (check) => {
        if (!check.signed) {
          const warning = 'the export is not signed (--allow-unsigned): nothing vouches for its content'
          process.stderr.write(`import: warning: ${warning}\n`)
        }
        bar.start(size, 0, { rows: 0 })
      },
      onRows: (n) => { rows += n; bar.update(input?.bytesRead ?? 0, { rows }) },
    })
    ok = true
    bar.update(size, { rows })
    bar.stop()
    process.stderr.write(`imported tenant ${result.tenantId} (${placement}): ${JSON.stringify(result.rows)}\n`)
  } finally {
    bar.stop()
    const held = lock as OperationLock | undefined
    if (!ok && held !== undefined && shard !== undefined) await releaseShard(held.client, shard).catch(() => {})
    await held?.release()
    await pool.end()
    await embedded?.stop()
  }
}

main().catch((failed: unknown) => {
  const error = tls === undefined ? failed : tlsFailure(failed, tls) ?? failed
  process.stderr.write(`import: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exit(1)
})
