import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type pg from 'pg'
import { audit } from '../../../audit.ts'
import { withTenantTransaction, type TransactionTimeouts } from '../../../db/tenant-transaction.ts'
import { conflict, HttpProblem, notFound } from '../../../errors.ts'
import { newId } from '../../../ids.ts'
import { toExport } from '../../../mappers/tenant-exports.ts'
import {
  enqueueExportJob, findTenantExport, findUnfinishedExport, insertTenantExport, listTenantExports,
  lockExportRequests,
} from '../../../repositories/tenant-exports.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems, ProblemSchema, Ref } from '../../../schemas/common.ts'
import { CreateExportSchema, ExportPage, ExportSchema } from '../../../schemas/exports.ts'
import { assertPeriodQuotaLeft } from '../../../limits/usage.ts'

const tags = ['exports']
const errors = [400, 401, 403, 503]
const config = { scope: 'admin' as const }

export interface ExportsOptions {
  /** How long a ready export stays downloadable (TENANT_EXPORT_TTL_MS). */
  exportTtlMs: number
}

const tenantExports: FastifyPluginAsyncTypebox<ExportsOptions> = async (fastify, options) => {
  fastify.post('/', {
    config,
    schema: {
      summary: "Request an export of all the tenant's data",
      operationId: 'createExport',
      description: 'Queues the export and answers at once, with the export and its `location`; a job writes the ' +
        'file in the background (follow it with GET /v1/exports/{id}). The file is NDJSON, one ' +
        '`{"table": ..., "row": {...}}` object a line, every table the tenant has rows in, parents before children ' +
        '(the format of the operator\'s export), without secrets: no API key hashes, no webhook signing secrets. ' +
        'Rows changed while it runs may appear as they were or as they became. One export at a time: 409 while ' +
        'another is queued or running. 403 `quota-exceeded` once the period\'s `export_bytes` quota is used up (an ' +
        'export under way is finished and counted).',
      tags,
      body: CreateExportSchema,
      response: { 202: Ref(ExportSchema, 'the export, queued'), ...problems(...errors, 409) },
    },
    // No options yet, so no body at all is fine too (a JSON null is not).
    preValidation: async (request) => { if (request.body === undefined) request.body = {} },
  }, async (request, reply) => {
    const actor = request.tenant!
    await assertPeriodQuotaLeft(request.db, actor.tenantId, 'export_bytes')
    await lockExportRequests(request.db, actor.tenantId)
    const unfinished = await findUnfinishedExport(request.db)
    if (unfinished !== undefined) {
      throw conflict(`export ${unfinished.id} is still ${unfinished.status}: wait for it to finish`,
        'export-in-progress')
    }
    const row = await insertTenantExport(request.db, {
      id: newId(), actorType: actor.actorType, actorId: actor.actorId, ttlMs: options.exportTtlMs,
    })
    await enqueueExportJob(request.db, row.id)
    const created = toExport(row)
    await audit(request, 'export.requested', { type: 'export', id: row.id }, {}, created)
    return reply.code(202).header('location', `/v1/exports/${row.id}`).send(created)
  })

  fastify.get('/', {
    config: { ...config, singleQuery: true },
    schema: {
      summary: "List the tenant's exports, newest first",
      operationId: 'listExports',
      description: 'Expired exports are listed until the maintenance sweep deletes them.',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(ExportPage, 'a page of exports, newest first'), ...problems(...errors) },
    },
  }, async (request) => paginate(request.query, (page) => listTenantExports(request.db, page), toExport))

  fastify.get('/:id', {
    config: { ...config, singleQuery: true },
    schema: {
      summary: 'Retrieve an export: its status and progress',
      operationId: 'getExport',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(ExportSchema, 'the export'), ...problems(...errors, 404) },
    },
  }, async (request) => {
    const row = await findTenantExport(request.db, request.params.id)
    if (row === undefined) throw notFound('export')
    return toExport(row)
  })

  fastify.get('/:id/download', {
    config: { ...config, singleQuery: true },
    schema: {
      summary: 'Download a ready export (NDJSON)',
      operationId: 'downloadExport',
      description: 'The file, streamed as it is read (`content-length` is its size: a shorter body was cut off). ' +
        '409 until the export is ready; 410 once it has expired.',
      tags,
      params: IdParamsSchema,
      response: {
        200: { description: 'the export file', content: { 'application/x-ndjson': { schema: Type.String() } } },
        ...problems(...errors, 404, 409),
        410: {
          description: 'the export has expired: its file is deleted (request a new export)',
          content: { 'application/problem+json': { schema: Ref(ProblemSchema) } },
        },
      },
    },
  }, async (request, reply) => {
    const row = await findTenantExport(request.db, request.params.id)
    if (row === undefined) throw notFound('export')
    if (row.status === 'ready' && row.expired) {
      throw new HttpProblem(410, { slug: 'export-expired', title: 'Gone', detail: 'this export has expired' })
    }
    if (row.status !== 'ready') {
      const detail = row.status === 'failed'
        ? 'this export failed: request a new one'
        : `this export is ${row.status}, not ready yet`
      throw conflict(detail, 'export-not-ready')
    }
    const tenantId = request.tenant!.tenantId
    const chunks = readChunks(fastify.dbPool, tenantId, row.id, Number(row.bytes), fastify.dbLimits.timeouts)
    request.log.info({ exportId: row.id, bytes: Number(row.bytes) }, 'export download started')
    return reply
      .type('application/x-ndjson')
      .header('content-disposition', `attachment; filename="export-${row.id}.ndjson"`)
      .header('content-length', String(row.bytes))
      .header('cache-control', 'no-store')
      // A stream, not the documented string: the route's 200 schema only describes the body for OpenAPI.
      .send(Readable.from(chunks, { objectMode: false }) as unknown as string)
  })
}

/**
 * The file's chunks in order, each read in a short transaction of its own under the tenant's binding: the
 * request's transaction has committed before the body is sent, and a slow client holds no connection
 * between chunks. Readable.from pulls the next chunk only once the previous one has been taken, so about
 * one chunk is in memory. A file that does not add up (deleted by the sweep mid-way) ends in an error,
 * which cuts the response short of its content-length.
 */
async function * readChunks (
  pool: pg.Pool, tenantId: string, exportId: string, bytes: number, timeouts: TransactionTimeouts
): AsyncGenerator<Buffer> {
  let sent = 0
  for (let after = -1; ;) {
    const chunk = await withTenantTransaction(pool, tenantId, async ({ db }) =>
      db.selectFrom('tenant_export_chunks').select(['seq', 'data'])
        .where('tenant_id', '=', tenantId).where('export_id', '=', exportId).where('seq', '>', after)
        .orderBy('seq').limit(1).executeTakeFirst(), { readOnly: true, timeouts })
    if (chunk === undefined) break
    after = chunk.seq
    sent += chunk.data.length
    yield chunk.data
  }
  if (sent !== bytes) throw new Error(`export ${exportId} ended after ${sent} of its ${bytes} bytes`)
}

export default tenantExports
