import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { Kysely } from 'kysely'
import { v7 as uuidv7 } from 'uuid'
import { ALL_SCOPES, generateApiKey } from '../../../../auth/api-keys.ts'
import { eraseTenant } from '../../../../db/erasure.ts'
import { allocateShard, movePlacement, PlacementBusy } from '../../../../db/placement.ts'
import type { DB } from '../../../../db/schema.ts'
import { exportTenant } from '../../../../db/tenant-data.ts'
import { withTenantTransaction } from '../../../../db/tenant-transaction.ts'
import { conflict, notFound } from '../../../../errors.ts'
import { toOperatorTenant } from '../../../../mappers/tenants.ts'
import { insertApiKey } from '../../../../repositories/api-keys.ts'
import { insertAuditEvent } from '../../../../repositories/audit-events.ts'
import { findTenant, insertTenant, listTenants } from '../../../../repositories/tenants.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems } from '../../../../schemas/common.ts'
import { CreatedTenantSchema, CreateTenantSchema, ErasureReceiptSchema, OperatorTenantSchema, PlacementChangeSchema, PlacementResultSchema, TenantPage } from '../../../../schemas/tenants.ts'

const tags = ['operator']

/** An operator action in the tenant's own audit trail (same transaction as the action). */
async function auditOperator (trx: Kysely<DB>, request: FastifyRequest, action: string, tenantId: string, data: Record<string, unknown>): Promise<void> {
  await insertAuditEvent(trx, {
    id: uuidv7(),
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
    },
  }, async (request, reply) => {
    const id = uuidv7()
    const placement = request.body.placement ?? 'pooled'
    const key = generateApiKey(id)
    const started = performance.now()
    // The operator connection binds the new tenant like any request does, so the policies'
    // WITH CHECK accepts exactly this tenant's rows; the tenant row, its partitions (dedicated), its
    // key and the audit event commit together or not at all.
    const tenant = await withTenantTransaction(fastify.ownerPool, id, async ({ db }) => {
      const shard = await allocateShard(db, id, placement)
      const row = await insertTenant(db, { id, name: request.body.name, slug: request.body.slug, placement, shard })
      await insertApiKey(db, { id: key.id, name: 'initial admin key', prefix: key.prefix, secret_hash: key.secretHash, scopes: [...ALL_SCOPES] })
      await auditOperator(db, request, 'tenant.created', id, { slug: row.slug, placement, initial_key_prefix: key.prefix })
      return row
    })
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
      description: 'Moves every row of the sharded tables in one transaction. The tenant\'s requests wait for the move, then continue on the new placement.',
      tags,
      params: IdParamsSchema,
      body: PlacementChangeSchema,
      response: { 200: PlacementResultSchema, ...problems(400, 401, 404, 409, 503) },
    },
  }, async (request) => {
    const { id } = request.params
    let moved
    try {
      moved = await movePlacement(fastify.ownerPool, id, request.body.placement, options.cacheGraceMs, async (db, change) => {
        if (change.from.placement !== change.to.placement) {
          await auditOperator(db, request, 'tenant.placement_changed', id, { from: change.from.placement, to: change.to.placement, rows_moved: change.rowsMoved })
        }
        return (await findTenant(db, id))!
      })
    } catch (error) {
      if (error instanceof PlacementBusy) throw conflict(error.message, 'tenant-busy')
      throw error
    }
    if (moved === undefined) throw notFound('tenant')
    request.log.info({ tenantId: id, from: moved.change.from, to: moved.change.to, rowsMoved: moved.change.rowsMoved }, 'tenant placement changed')
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
        'removes every row (dropping dedicated partitions), verifies from the catalog that nothing is left and keeps a receipt outside the tenant\'s data.',
      tags,
      params: IdParamsSchema,
      response: { 200: ErasureReceiptSchema, ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const { id } = request.params
    request.log.info({ tenantId: id }, 'tenant erasure started: credentials revoked first')
    const receipt = await eraseTenant(fastify.ownerPool, id, { requestedBy: 'operator', requestId: request.id, graceMs: options.cacheGraceMs })
    if (receipt === undefined) throw notFound('tenant')
    request.log.info({ tenantId: id, rowsRemoved: receipt.rows_removed, verified: receipt.verified }, 'tenant erased')
    return receipt
  })
}

export default tenants
