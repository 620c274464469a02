import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { Kysely } from 'kysely'
import { newId } from '../../../../ids.ts'
import { ALL_SCOPES, generateApiKey } from '../../../../auth/api-keys.ts'
import { logAuditAppended } from '../../../../audit.ts'
import { ErasureIncomplete, eraseTenant } from '../../../../db/erasure.ts'
import { claimShard, createShard, movePlacement, PlacementBusy, pooledShardFor, releaseShard, SharedTablesBusy, withOperationLock } from '../../../../db/placement.ts'
import type { DB } from '../../../../db/schema.ts'
import { exportTenant } from '../../../../db/tenant-data.ts'
import { withTenantTransaction } from '../../../../db/tenant-transaction.ts'
import { conflict, HttpProblem, notFound, unavailable } from '../../../../errors.ts'
import { toOperatorTenant } from '../../../../mappers/tenants.ts'
import { insertApiKey } from '../../../../repositories/api-keys.ts'
import { insertAuditEvent, type AppendedAuditEvent } from '../../../../repositories/audit-events.ts'
import { findTenant, insertTenant, listTenants } from '../../../../repositories/tenants.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems } from '../../../../schemas/common.ts'
import { CreatedTenantSchema, CreateTenantSchema, ErasureReceiptSchema, OperatorTenantSchema, PlacementChangeSchema, PlacementResultSchema, TenantPage } from '../../../../schemas/tenants.ts'

const tags = ['operator']

/**
 * An operator action in the tenant's own audit trail (same transaction as the action). The caller
 * logs the result with logAuditAppended once that transaction has committed.
 */
async function auditOperator (trx: Kysely<DB>, request: FastifyRequest, action: string, tenantId: string, data: Record<string, unknown>): Promise<AppendedAuditEvent> {
  return insertAuditEvent(trx, {
    id: newId(),
    actor_type: 'operator',
    actor_id: 'operator',
    action,
    resource_type: 'tenant',
    resource_id: tenantId,
    request_id: request.id,
    data: JSON.stringify(data),
  })
}

export interface TenantsOptions {
  /** How long a placement move or an erasure waits, after notifying, for the instances' credential caches to let go. */
  cacheGraceMs: number
}

const tenants: FastifyPluginAsyncTypebox<TenantsOptions> = async (fastify, options) => {
  fastify.post('/', {
    schema: {
      summary: 'Provision a tenant and its first admin API key',
      description: 'placement defaults to pooled; dedicated creates the tenant\'s own partitions in the same transaction.',
      tags,
      body: CreateTenantSchema,
      response: { 201: CreatedTenantSchema, ...problems(400, 401, 409, 503) },
      // 503 also when the shared tables stay locked by other DDL longer than a dedicated onboarding waits.
    },
  }, async (request, reply) => {
    const id = newId()
    const placement = request.body.placement ?? 'pooled'
    const key = generateApiKey(id)
    const started = performance.now()
    // Cheap early answer for the common conflict (the unique key stays the guarantee): a dedicated
    // onboarding would otherwise create partitions only to remove them again.
    if (await fastify.ownerDb.selectFrom('tenants').select('id').where('slug', '=', request.body.slug).executeTakeFirst() !== undefined) {
      throw conflict('a tenant with this slug already exists')
    }
    // The operator connection binds the new tenant like any request does, so the policies'
    // WITH CHECK accepts exactly this tenant's rows; the tenant row, its key and the audit event
    // commit together or not at all.
    const provision = async (dedicatedShard?: number) => withTenantTransaction(fastify.ownerPool, id, async ({ db }) => {
      const shard = dedicatedShard ?? await pooledShardFor(db, id)
      const row = await insertTenant(db, { id, name: request.body.name, slug: request.body.slug, placement, shard })
      if (dedicatedShard !== undefined) await claimShard(db, dedicatedShard)
      // Said, not defaulted: a key that does not say has no owner rights (sql/0013_owner_rights_default.sql).
      await insertApiKey(db, { id: key.id, name: 'initial admin key', prefix: key.prefix, secret_hash: key.secretHash, scopes: [...ALL_SCOPES], owner_rights: true })
      const appended = await auditOperator(db, request, 'tenant.created', id, { slug: row.slug, placement, initial_key_prefix: key.prefix })
      return { row, appended }
    })
    let created
    if (placement === 'pooled') {
      created = await provision()
    } else {
      // Dedicated: the partitions first, in a short DDL transaction of their own (other tenants'
      // queries on the shared parents queue behind it for at most a lock_timeout), reserved for this
      // tenant until the provisioning transaction claims them; if that fails, they are removed (or,
      // should even that fail, left reserved for the next sweep).
      created = await mapDdlErrors(() => withOperationLock(fastify.ownerPool, id, async (lock) => {
        const shard = await createShard(lock.client, id, 'onboarding')
        try {
          return await provision(shard)
        } catch (error) {
          await releaseShard(lock.client, shard).catch((releaseError: unknown) => {
            request.log.warn({ err: releaseError, shard }, 'the partitions of a failed onboarding are left for the next sweep')
          })
          throw error
        }
      }))
    }
    const tenant = created.row
    logAuditAppended(request.log, id, created.appended)
    request.log.info({ tenantId: id, slug: tenant.slug, placement, keyPrefix: key.prefix, ms: Math.round(performance.now() - started) }, 'tenant provisioned')
    return reply.code(201).send({ tenant: toOperatorTenant(tenant), api_key: { id: key.id, key: key.key, scopes: [...ALL_SCOPES] } })
  })

  fastify.get('/', {
    schema: {
      summary: 'List tenants, newest first',
      tags,
      querystring: PageQuerySchema,
      response: { 200: TenantPage, ...problems(400, 401, 503) },
    },
  }, async (request) => paginate(request.query, (page) => listTenants(fastify.ownerDb, page), toOperatorTenant))

  fastify.get('/:id', {
    schema: {
      summary: 'Retrieve a tenant',
      tags,
      params: IdParamsSchema,
      response: { 200: OperatorTenantSchema, ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const row = await findTenant(fastify.ownerDb, request.params.id)
    if (row === undefined) throw notFound('tenant')
    return toOperatorTenant(row)
  })

  fastify.put('/:id/placement', {
    schema: {
      summary: "Change a tenant's placement (pooled ⇄ dedicated)",
      description: 'Creates a dedicated shard\'s partitions in a short transaction of their own, then moves every row of the sharded tables in one transaction ' +
        '(the tenant\'s requests wait for it, then continue on the new placement; other tenants are not held up), then removes a dedicated shard left empty. ' +
        '409 while another move or an erasure of the tenant runs; a tenant left `moving` by a move that died is taken over.',
      tags,
      params: IdParamsSchema,
      body: PlacementChangeSchema,
      response: { 200: PlacementResultSchema, ...problems(400, 401, 404, 409, 503) },
    },
  }, async (request) => {
    const { id } = request.params
    let appended: AppendedAuditEvent | undefined
    const moved = await mapDdlErrors(() => movePlacement(fastify.ownerPool, id, request.body.placement, {
      graceMs: options.cacheGraceMs,
      log: (message, details) => { request.log.warn(details, message) },
    }, async (db, change) => {
      if (change.from.placement !== change.to.placement) {
        appended = await auditOperator(db, request, 'tenant.placement_changed', id, { from: change.from.placement, to: change.to.placement, rows_moved: change.rowsMoved })
      }
      return (await findTenant(db, id))!
    }))
    if (moved === undefined) throw notFound('tenant')
    if (appended !== undefined) logAuditAppended(request.log, id, appended)
    request.log.info({ tenantId: id, from: moved.change.from, to: moved.change.to, rowsMoved: moved.change.rowsMoved, partitionsReleased: moved.partitionsReleased }, 'tenant placement changed')
    return { tenant: toOperatorTenant(moved.result), rows_moved: moved.change.rowsMoved }
  })

  fastify.get('/:id/export', {
    schema: {
      summary: 'Export every row the tenant owns (NDJSON)',
      description: 'One JSON object per line, `{"table": ..., "row": {...}}`, parents before children, from one consistent snapshot, ' +
        'streamed with constant memory. `npm run import` loads it into another deployment.',
      tags,
      params: IdParamsSchema,
      response: {
        200: { description: 'the export', content: { 'application/x-ndjson': { schema: Type.String() } } },
        ...problems(400, 401, 404, 503),
      },
    },
  }, async (request, reply) => {
    const { id } = request.params
    if (await findTenant(fastify.ownerDb, id) === undefined) throw notFound('tenant')
    let rows = 0
    const lines = exportTenant(fastify.ownerPool, id, (plan) => { rows = plan.total })
    request.log.info({ tenantId: id }, 'tenant export started')
    reply.raw.once('finish', () => { request.log.info({ tenantId: id, rows }, 'tenant export finished') })
    return reply
      .type('application/x-ndjson')
      .header('content-disposition', `attachment; filename="tenant-${id}.ndjson"`)
      // A stream, not the documented string: the route's 200 schema only describes the body for OpenAPI.
      .send(Readable.from(lines) as unknown as string)
  })

  fastify.delete('/:id', {
    schema: {
      summary: 'Erase a tenant (right to be forgotten)',
      description: 'Revokes the tenant\'s credentials first (its next request fails), waits for its in-flight requests, ' +
        'removes every row, verifies from the catalog that nothing is left and keeps a receipt outside the tenant\'s data, then drops a dedicated tenant\'s ' +
        'emptied partitions (if that fails, the receipt says so and the next sweep drops them). If rows would be left, nothing is removed: a 500 ' +
        'names the tables, the tenant stays erasing and a repeated DELETE completes the erasure. 409 while a placement move of the tenant runs.',
      tags,
      params: IdParamsSchema,
      response: { 200: ErasureReceiptSchema, ...problems(400, 401, 404, 409, 500, 503) },
    },
  }, async (request) => {
    const { id } = request.params
    request.log.info({ tenantId: id }, 'tenant erasure started: credentials revoked first')
    let receipt
    try {
      receipt = await eraseTenant(fastify.ownerPool, id, {
        requestedBy: 'operator',
        requestId: request.id,
        graceMs: options.cacheGraceMs,
        log: (message, details) => { request.log.warn(details, message) },
      })
    } catch (error) {
      if (error instanceof PlacementBusy) throw conflict(error.message, 'tenant-busy')
      if (error instanceof ErasureIncomplete) {
        request.log.error({ tenantId: id, rowsLeft: error.rowsLeft }, 'tenant erasure incomplete: rows left, nothing removed, the tenant stays erasing')
        throw new HttpProblem(500, {
          slug: 'erasure-incomplete',
          title: 'Erasure Incomplete',
          detail: `rows of the tenant would be left in ${Object.keys(error.rowsLeft).join(', ')}, so nothing was removed; ` +
            'the tenant stays erasing (its credentials revoked) and a repeated DELETE completes the erasure once they can be removed',
          errors: Object.entries(error.rowsLeft).map(([table, n]) => ({ path: `tables/${table}`, message: `${n} row${n === 1 ? '' : 's'} left` })),
        })
      }
      throw error
    }
    if (receipt === undefined) throw notFound('tenant')
    request.log.info({ tenantId: id, rowsRemoved: receipt.rows_removed, verified: receipt.verified, partitionsDropped: receipt.partitions_dropped }, 'tenant erased')
    return receipt
  })
}

/** Partition DDL that could not get the shared tables' locks in time: retry later (503), a move held by another operation: 409. */
async function mapDdlErrors<T> (work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (error) {
    if (error instanceof PlacementBusy) throw conflict(error.message, 'tenant-busy')
    if (error instanceof SharedTablesBusy) throw unavailable('the shared tables are busy with other schema changes; retry shortly', 5)
    throw error
  }
}

export default tenants
