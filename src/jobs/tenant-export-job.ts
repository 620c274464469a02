import { sql } from 'kysely'
import type pg from 'pg'
import { withTenantTransaction, type TenantTransaction } from '../db/tenant-transaction.ts'
import { logFailure } from '../log-failure.ts'
import { countRows, linePrefix, rowsQuery } from '../tenancy/tenant-export.ts'
import { exportedTables, type TenantTableInfo } from '../tenancy/tenant-tables.ts'
import type { JobContext, TenantJob, TenantJobHandler } from './types.ts'
import { applyQuotaDefaults } from '../limits/limits.ts'

/**
 * The tenant's own export (POST /v1/exports): the lines the operator export writes for the tenant
 * (src/tenancy/tenant-export.ts: same tables, order and records) less the secrets (SECRET_COLUMNS) and
 * without the operator's signature, stored as chunks of about CHUNK_BYTES in tenant_export_chunks.
 *
 * Everything runs as the runtime role under the tenant's binding, so an export id of another tenant
 * finds nothing. Each chunk is read (a page of rows after the last key written, in export order) and
 * written, with the progress, in a short transaction of its own: no transaction outlives a chunk, so the
 * tenant's placement moves and erasure never wait long behind an export, and progress shows as it goes.
 * The price: unlike the operator export, the file is not one snapshot; a row changed while the export
 * runs appears as it was when its chunk was read. A run starts over from nothing (its earlier chunks
 * deleted); each transaction checks that the export is still this run's, so a run that was superseded
 * (its worker presumed dead) or whose export was deleted stops without writing.
 */

/** About how much NDJSON a chunk (one row of tenant_export_chunks, one transaction) holds. */
export const CHUNK_BYTES = 256 * 1024
/** Rows per query while filling a chunk. */
const PAGE_ROWS = 200
const FAILED = 'the export could not be completed; request a new one'

export interface TenantExportOptions {
  chunkBytes?: number
  pageRows?: number
  /** Called once each chunk has committed, with the progress it recorded (tests watch it move). */
  afterChunk?: (progress: { seq: number, rowsDone: number, bytes: number }) => Promise<void>
}

/** The handler, with its chunk and page sizes (tests make them small). */
export function tenantExportJob (options: TenantExportOptions = {}): TenantJobHandler {
  return async (job, context) => {
    const { log } = context
    try {
      const result = await exportChunks(job, context, options)
      if (result === undefined) {
        log.info({ exportId: job.ref }, 'tenant export: no such unfinished export of this tenant; nothing to do')
      } else {
        log.info({ exportId: job.ref, ...result }, `tenant export ${result.finished ? 'ready' : 'stopped: superseded'}`)
      }
    } catch (error) {
      // The queue's last run of it: the export is recorded as failed rather than left queued.
      if (job.attempt >= job.maxAttempts && !context.signal.aborted) {
        await markFailed(context.pool, job).catch(logFailure(log, 'recording a tenant export as failed'))
      }
      throw error
    }
  }
}

export const runTenantExport: TenantJobHandler = tenantExportJob()

interface Outcome {
  /** False when the export stopped being this run's (deleted, or taken over by another run). */
  finished: boolean
  rows: number
  bytes: number
  chunks: number
  ms: number
}

async function exportChunks (
  job: TenantJob, { pool, signal, quotaDefaults }: JobContext, options: TenantExportOptions
): Promise<Outcome | undefined> {
  const sizes = { chunkBytes: options.chunkBytes ?? CHUNK_BYTES, pageRows: options.pageRows ?? PAGE_ROWS }
  const started = performance.now()
  const begun = await begin(pool, job)
  if (begun === undefined) return undefined
  const { tables, run } = begun
  const at: Position = { table: 0, after: undefined }
  let seq = 0
  let rows = 0
  let bytes = 0
  const outcome = (finished: boolean): Outcome =>
    ({ finished, rows, bytes, chunks: seq, ms: Math.round(performance.now() - started) })

  while (at.table < tables.length) {
    if (signal.aborted) throw new Error('the worker is stopping; the export starts over on its next run')
    const chunk = await withTenantTransaction(pool, job.tenantId, async (trx) => {
      const { shard } = await trx.ready
      if (shard === null || !await isRunning(trx, job, run)) return undefined
      await trx.client.query("SELECT set_config('TimeZone', 'UTC', true)")
      const read = await readChunk(trx, job.tenantId, tables, at, shard, sizes)
      if (read.rows === 0) return read
      await trx.db.insertInto('tenant_export_chunks').values({ export_id: job.ref, seq, data: read.data }).execute()
      await trx.db.updateTable('tenant_exports')
        .set({ rows_done: sql`rows_done + ${read.rows}`, bytes: sql`bytes + ${read.data.length}` })
        .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).execute()
      return read
    })
    if (chunk === undefined) return outcome(false)
    if (chunk.rows === 0) continue
    rows += chunk.rows
    bytes += chunk.data.length
    seq++
    await options.afterChunk?.({ seq, rowsDone: rows, bytes })
  }

  const finished = await withTenantTransaction(pool, job.tenantId, async (trx) => {
    if (!await isRunning(trx, job, run)) return false
    // The export's bytes are metered at COMMIT (sql/0020), against the configured quotas too.
    await applyQuotaDefaults(trx.db, quotaDefaults)
    // expires_at held created_at + the retention period (see insertTenantExport): counted from now instead.
    await trx.db.updateTable('tenant_exports').set({
      status: 'ready',
      finished_at: sql`now()`,
      expires_at: sql`now() + (expires_at - created_at)`,
      rows_total: sql`rows_done`,
    }).where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).execute()
    return true
  })
  return outcome(finished)
}

/** Where reading stands: the table, and the key of the last row written from it. */
interface Position {
  table: number
  after: string[] | undefined
}

/** Reads pages of rows from `at` on until the chunk is full or every table is read, advancing `at`. */
async function readChunk (
  trx: TenantTransaction, tenantId: string, tables: TenantTableInfo[], at: Position, shard: number,
  sizes: { chunkBytes: number, pageRows: number }
): Promise<{ rows: number, data: Buffer }> {
  const lines: Buffer[] = []
  let size = 0
  while (size < sizes.chunkBytes && at.table < tables.length) {
    const table = tables[at.table]!
    const { text, values } = rowsQuery(table, tenantId, { limit: sizes.pageRows, after: at.after, shard })
    const { rows: page } = await trx.client.query<{ j: string, k: string[] }>(text, values)
    const prefix = linePrefix(table.name)
    for (const row of page) {
      const line = Buffer.from(`${prefix}${row.j}}\n`)
      lines.push(line)
      size += line.length
    }
    if (page.length < sizes.pageRows) {
      at.table++
      at.after = undefined
    } else {
      at.after = page.at(-1)!.k
    }
  }
  return { rows: lines.length, data: Buffer.concat(lines, size) }
}

/**
 * Takes the export for a new run: found (under the tenant's binding) and unfinished, its chunks of an
 * earlier run deleted, its rows counted, marked running. `run` (its new started_at, exactly) identifies
 * this run. Undefined when there is nothing to do: no such export of this tenant, or ready or failed already.
 */
async function begin (
  pool: pg.Pool, job: TenantJob
): Promise<{ tables: TenantTableInfo[], run: string } | undefined> {
  return withTenantTransaction(pool, job.tenantId, async (trx) => {
    const found = await trx.db.selectFrom('tenant_exports').select('status')
      .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).forUpdate().executeTakeFirst()
    if (found === undefined || (found.status !== 'queued' && found.status !== 'running')) return undefined
    await trx.db.deleteFrom('tenant_export_chunks')
      .where('tenant_id', '=', job.tenantId).where('export_id', '=', job.ref).execute()
    const tables = await exportedTables(trx.client, 'tenant')
    const plan = await countRows(trx.client, tables, job.tenantId)
    const { run } = await trx.db.updateTable('tenant_exports').set({
      status: 'running',
      started_at: sql`now()`,
      finished_at: null,
      rows_total: plan.total,
      rows_done: 0,
      bytes: 0,
      error: null,
    }).where('tenant_id', '=', job.tenantId).where('id', '=', job.ref)
      .returning(sql<string>`started_at::text`.as('run')).executeTakeFirstOrThrow()
    return { tables, run }
  })
}

/** The export is still running as this run started it; locked until the transaction ends. */
async function isRunning (trx: TenantTransaction, job: TenantJob, run: string): Promise<boolean> {
  const row = await trx.db.selectFrom('tenant_exports').select('id')
    .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).where('status', '=', 'running')
    .where('started_at', '=', sql<Date>`${run}::timestamptz`).forUpdate().executeTakeFirst()
  return row !== undefined
}

/** The last attempt failed: the export will not be made; its partial file goes. */
async function markFailed (pool: pg.Pool, job: TenantJob): Promise<void> {
  await withTenantTransaction(pool, job.tenantId, async ({ db }) => {
    const failed = await db.updateTable('tenant_exports').set({ status: 'failed', error: FAILED })
      .where('tenant_id', '=', job.tenantId).where('id', '=', job.ref).where('status', 'in', ['queued', 'running'])
      .executeTakeFirst()
    if (Number(failed.numUpdatedRows) === 0) return
    await db.deleteFrom('tenant_export_chunks')
      .where('tenant_id', '=', job.tenantId).where('export_id', '=', job.ref).execute()
  })
}
