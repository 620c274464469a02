import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { Selectable } from 'kysely'
import { ALL_SCOPES, type Scope } from '../../../../auth/api-keys.ts'
import { logAuditAppended } from '../../../../audit.ts'
import type { Tenants } from '../../../../db/schema.ts'
import { conflict, HttpProblem, notFound, unavailable } from '../../../../errors.ts'
import { toApiKey } from '../../../../mappers/identity.ts'
import { toOperatorTenant } from '../../../../mappers/tenants.ts'
import { findTenant, listTenants } from '../../../../repositories/tenants.ts'
import { ErasureIncomplete, eraseTenant } from '../../../../tenancy/erasure.ts'
import { MISSING_KEY } from '../../../../tenancy/export-signature.ts'
import { changePlacement } from '../../../../tenancy/move.ts'
import { createTenant, SlugTaken } from '../../../../tenancy/onboarding.ts'
import { PlacementBusy } from '../../../../tenancy/operation-lock.ts'
import { CreationKeyReused, issueOwnerKey, TenantErasing, type IssuedOwnerKey } from '../../../../tenancy/owner-keys.ts'
import { SharedTablesBusy } from '../../../../tenancy/shards.ts'
import { exportTenant } from '../../../../tenancy/tenant-export.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems, Ref } from '../../../../schemas/common.ts'
import { CreatedApiKeySchema } from '../../../../schemas/identity.ts'
import {
  CreatedTenantSchema, CreateTenantHeadersSchema, CreateTenantSchema, ErasureReceiptSchema, IssueOwnerKeySchema,
  OperatorTenantSchema, PlacementChangeSchema, PlacementResultSchema, TenantPage,
} from '../../../../schemas/tenants.ts'

const tags = ['operator']

export interface TenantsOptions {
  /** How long a placement move or an erasure waits, after notifying, for the instances' credential caches to let go. */
  cacheGraceMs: number
  /** EXPORT_SIGNING_KEY: every export is signed with it; without it, exports are refused. */
  exportSigningKey: string | undefined
}

const tenants: FastifyPluginAsyncTypebox<TenantsOptions> = async (fastify, options) => {
  fastify.post('/', {
    schema: {
      summary: 'Provision a tenant and its first admin API key',
      operationId: 'adminCreateTenant',
      description: 'placement defaults to pooled; dedicated creates the tenant\'s own partitions in the same ' +
        'transaction. With an idempotency-key header (say, a retry after a lost response), a repeat within 24 hours ' +
        'with the same key and body returns the tenant that key created, with 200 and `idempotent-replayed: true`, ' +
        'and with a NEW owner key: the first key\'s secret was never stored, so it cannot be replayed. The first key ' +
        'stays live (its response may have arrived after all); the tenant\'s audit trail shows both, and one never ' +
        'used can be revoked. The same key with another body is a 409.',
      tags,
      headers: CreateTenantHeadersSchema,
      body: CreateTenantSchema,
      response: {
        '2xx': Ref(CreatedTenantSchema, '201: created; 200: a repeat (idempotent-replayed: true)'),
        ...problems(400, 401, 409, 503),
      },
      // 503 also when the shared tables stay locked by other DDL longer than a dedicated onboarding waits.
    },
  }, async (request, reply) => {
    const started = performance.now()
    let onboarded
    try {
      onboarded = await createTenant(fastify, request.body, {
        requestId: request.id,
        idempotencyKey: request.headers['idempotency-key'],
        log: request.log,
      })
    } catch (error) {
      if (error instanceof SlugTaken) throw conflict(error.message)
      if (error instanceof CreationKeyReused) throw conflict(error.message, 'idempotency-key-reuse')
      throw operationProblem(error)
    }
    if (onboarded.outcome === 'repeated') {
      const { issued } = onboarded
      logIssuedKey(request, issued)
      request.log.info({ tenantId: issued.tenant.id, keyPrefix: issued.row.prefix },
        'tenant creation repeated: a new owner key')
      const body = createdResponse(issued.tenant, issued.row.id, issued.key)
      return reply.code(200).header('idempotent-replayed', 'true').send(body)
    }
    const { tenant, key } = onboarded
    logAuditAppended(request.log, tenant.id, onboarded.appended)
    const ms = Math.round(performance.now() - started)
    request.log.info({ tenantId: tenant.id, slug: tenant.slug, placement: tenant.placement, keyPrefix: key.prefix, ms },
      'tenant provisioned')
    return reply.code(201).send(createdResponse(tenant, key.id, key.key))
  })

  fastify.get('/', {
    schema: {
      summary: 'List tenants, newest first',
      operationId: 'adminListTenants',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(TenantPage, 'a page of tenants, newest first'), ...problems(400, 401, 503) },
    },
  }, async (request) => paginate(request.query, (page) => listTenants(fastify.ownerDb, page), toOperatorTenant))

  fastify.get('/:id', {
    schema: {
      summary: 'Retrieve a tenant',
      operationId: 'adminGetTenant',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(OperatorTenantSchema, 'the tenant'), ...problems(400, 401, 404, 503) },
    },
  }, async (request) => {
    const row = await findTenant(fastify.ownerDb, request.params.id)
    if (row === undefined) throw notFound('tenant')
    return toOperatorTenant(row)
  })

  fastify.post('/:id/api-keys', {
    schema: {
      summary: 'Issue an API key for a tenant (an owner key unless told otherwise)',
      operationId: 'adminIssueTenantApiKey',
      description: 'For a tenant left without a working admin key. The key is returned once, in this response; ' +
        'only its hash is stored. Scopes default to read, write and admin; with admin, the key has owner rights, ' +
        'like the initial key. Recorded in the tenant\'s audit trail as `api_key.created` by the operator. 404 for ' +
        'an unknown or erased tenant, 409 while it is being erased; during a placement move it waits for the rows ' +
        'to move, as the tenant\'s requests do.',
      tags,
      params: IdParamsSchema,
      body: IssueOwnerKeySchema,
      response: {
        201: Ref(CreatedApiKeySchema, 'the new key, with its secret (shown this once)'),
        ...problems(400, 401, 404, 409, 503),
      },
    },
    // Every field is optional, so no body at all is fine too (a JSON null is not).
    preValidation: async (request) => { if (request.body === undefined) request.body = {} },
  }, async (request, reply) => {
    let issued
    try {
      issued = await issueOwnerKey(fastify.ownerPool, request.params.id, {
        name: request.body.name ?? 'operator-issued key',
        scopes: request.body.scopes ?? [...ALL_SCOPES],
        requestId: request.id,
      })
    } catch (error) {
      throw operationProblem(error)
    }
    if (issued === undefined) throw notFound('tenant')
    logIssuedKey(request, issued)
    return reply.code(201).send({ ...toApiKey(issued.row), key: issued.key })
  })

  fastify.put('/:id/placement', {
    schema: {
      summary: "Change a tenant's placement (pooled ⇄ dedicated)",
      operationId: 'adminChangeTenantPlacement',
      description: 'Creates a dedicated shard\'s partitions in a short transaction of their own, then moves every ' +
        'row of the sharded tables in one transaction (the tenant\'s requests wait for it, then continue on the new ' +
        'placement; other tenants are not held up), then removes a dedicated shard left empty. 409 while another ' +
        'move or an erasure of the tenant runs; a tenant left `moving` by a move that died is taken over.',
      tags,
      params: IdParamsSchema,
      body: PlacementChangeSchema,
      response: {
        200: Ref(PlacementResultSchema, 'the tenant on its new placement'), ...problems(400, 401, 404, 409, 503),
      },
    },
  }, async (request) => {
    const { id } = request.params
    let changed
    try {
      changed = await changePlacement(fastify.ownerPool, id, request.body.placement, {
        graceMs: options.cacheGraceMs,
        requestId: request.id,
        log: request.log,
      })
    } catch (error) {
      throw operationProblem(error)
    }
    if (changed === undefined) throw notFound('tenant')
    if (changed.appended !== undefined) logAuditAppended(request.log, id, changed.appended)
    const { from, to, rowsMoved } = changed.change
    request.log.info({ tenantId: id, from, to, rowsMoved, partitionsReleased: changed.partitionsReleased },
      'tenant placement changed')
    return { tenant: toOperatorTenant(changed.tenant), rows_moved: rowsMoved }
  })

  fastify.get('/:id/export', {
    schema: {
      summary: 'Export every row the tenant owns (NDJSON)',
      operationId: 'adminExportTenant',
      description: 'One JSON object per line, `{"table": ..., "row": {...}}`, parents before children, from one ' +
        'consistent snapshot, streamed with constant memory, and a last line `{"signature": {...}}`: an HMAC-SHA256 ' +
        'with EXPORT_SIGNING_KEY over every byte before it. `npm run import` verifies it and loads the export into ' +
        'another deployment. 503 when no key is configured.',
      tags,
      params: IdParamsSchema,
      response: {
        200: { description: 'the export', content: { 'application/x-ndjson': { schema: Type.String() } } },
        ...problems(400, 401, 404, 503),
      },
    },
  }, async (request, reply) => {
    const { id } = request.params
    const key = options.exportSigningKey
    if (key === undefined) throw new HttpProblem(503, { detail: `tenant exports are off: ${MISSING_KEY}` })
    if (await findTenant(fastify.ownerDb, id) === undefined) throw notFound('tenant')
    let rows = 0
    const lines = exportTenant(fastify.ownerPool, id, key, (plan) => { rows = plan.total })
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
      operationId: 'adminEraseTenant',
      description: 'Revokes the tenant\'s credentials first (its next request fails), waits for its in-flight ' +
        'requests, removes every row, verifies from the catalog that nothing is left and keeps a receipt outside the ' +
        'tenant\'s data, then drops a dedicated tenant\'s emptied partitions (if that fails, the receipt says so and ' +
        'the next sweep drops them). If rows would be left, nothing is removed: a 500 names the tables, the tenant ' +
        'stays erasing and a repeated DELETE completes the erasure. 409 while a placement move of the tenant runs.',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(ErasureReceiptSchema, 'the erasure receipt'), ...problems(400, 401, 404, 409, 500, 503) },
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
        log: request.log,
      })
    } catch (error) {
      if (error instanceof ErasureIncomplete) {
        request.log.error({ tenantId: id, rowsLeft: error.rowsLeft },
          'tenant erasure incomplete: rows left, nothing removed, the tenant stays erasing')
        throw erasureIncomplete(error)
      }
      throw operationProblem(error)
    }
    if (receipt === undefined) throw notFound('tenant')
    const { rows_removed: rowsRemoved, verified, partitions_dropped: partitionsDropped } = receipt
    request.log.info({ tenantId: id, rowsRemoved, verified, partitionsDropped }, 'tenant erased')
    return receipt
  })
}

type CreatedTenant = Static<typeof CreatedTenantSchema>

function createdResponse (tenant: Selectable<Tenants>, keyId: string, key: string): CreatedTenant {
  return { tenant: toOperatorTenant(tenant), api_key: { id: keyId, key, scopes: [...ALL_SCOPES] as Scope[] } }
}

/** An operator-issued key: its audit event (the head anchor) logged once committed, and the issue itself. */
function logIssuedKey (request: FastifyRequest, issued: IssuedOwnerKey): void {
  const tenantId = issued.tenant.id
  logAuditAppended(request.log, tenantId, issued.appended)
  request.log.info({ tenantId, keyPrefix: issued.row.prefix, scopes: issued.row.scopes }, 'operator issued a key')
}

/**
 * The refusals of tenant operations as problems: another operation holds the tenant or it is being
 * erased (409), partition DDL could not get the shared tables' locks in time (503, retry later).
 */
function operationProblem (error: unknown): unknown {
  if (error instanceof PlacementBusy) return conflict(error.message, 'tenant-busy')
  if (error instanceof TenantErasing) return conflict(error.message, 'tenant-erasing')
  if (error instanceof SharedTablesBusy) {
    return unavailable('the shared tables are busy with other schema changes; retry shortly', 5)
  }
  return error
}

function erasureIncomplete (error: ErasureIncomplete): HttpProblem {
  const tables = Object.keys(error.rowsLeft).join(', ')
  return new HttpProblem(500, {
    slug: 'erasure-incomplete',
    title: 'Erasure Incomplete',
    detail: `rows of the tenant would be left in ${tables}, so nothing was removed; the tenant stays erasing ` +
      '(its credentials revoked) and a repeated DELETE completes the erasure once they can be removed',
    errors: Object.entries(error.rowsLeft)
      .map(([table, n]) => ({ path: `tables/${table}`, message: `${n} row${n === 1 ? '' : 's'} left` })),
  })
}

export default tenants
