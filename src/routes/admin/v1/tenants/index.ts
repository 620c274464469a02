import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { Selectable } from 'kysely'
import type pg from 'pg'
import { newId } from '../../../../ids.ts'
import { ALL_SCOPES, generateApiKey, type Scope } from '../../../../auth/api-keys.ts'
import { auditOperator, logAuditAppended } from '../../../../audit.ts'
import { ErasureIncomplete, eraseTenant } from '../../../../tenancy/erasure.ts'
import {
  creationKeys, CreationKeyReused, issueOwnerKey, repeatedCreation, TenantErasing,
  type IssuedOwnerKey, type OwnerKeyRequest,
} from '../../../../tenancy/owner-keys.ts'
import { claimShard, createShard, movePlacement, PlacementBusy, pooledShardFor, releaseShard, SharedTablesBusy, withOperationLock } from '../../../../tenancy/placement.ts'
import type { Tenants } from '../../../../db/schema.ts'
import { MISSING_KEY } from '../../../../tenancy/export-signature.ts'
import { exportTenant } from '../../../../tenancy/tenant-data.ts'
import { withTenantTransaction } from '../../../../db/tenant-transaction.ts'
import { conflict, HttpProblem, notFound, unavailable } from '../../../../errors.ts'
import { toApiKey } from '../../../../mappers/identity.ts'
import { toOperatorTenant } from '../../../../mappers/tenants.ts'
import { insertApiKey } from '../../../../repositories/api-keys.ts'
import type { AppendedAuditEvent } from '../../../../repositories/audit-events.ts'
import { findTenant, insertTenant, listTenants } from '../../../../repositories/tenants.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems } from '../../../../schemas/common.ts'
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
        '2xx': { ...CreatedTenantSchema, description: '201: created; 200: a repeat (idempotent-replayed: true)' },
        ...problems(400, 401, 409, 503),
      },
      // 503 also when the shared tables stay locked by other DDL longer than a dedicated onboarding waits.
    },
  }, async (request, reply) => {
    const id = newId()
    const placement = request.body.placement ?? 'pooled'
    const idempotencyKey = request.headers['idempotency-key']
    // The effective request: an omitted placement is the pooled one.
    const creation = idempotencyKey === undefined
      ? undefined
      : creationKeys(idempotencyKey, { ...request.body, placement })
    /** What the creation with this idempotency key made, with a new owner key; undefined when nothing (any more). */
    const repeat = async (): Promise<CreatedTenant | undefined> => {
      if (creation === undefined) return undefined
      let tenantId
      try {
        tenantId = await repeatedCreation(fastify.ownerDb, fastify.ownerPool, creation)
      } catch (error) {
        if (error instanceof CreationKeyReused) throw conflict(error.message, 'idempotency-key-reuse')
        throw error
      }
      if (tenantId === undefined) return undefined
      const issued = await issueKey(fastify.ownerPool, request, tenantId, {
        name: 'initial admin key (reissued on a repeated creation)',
        scopes: [...ALL_SCOPES],
        auditData: { reason: 'tenant creation repeated with its idempotency-key' },
      })
      if (issued === undefined) return undefined // erased meanwhile, key and all
      request.log.info({ tenantId, keyPrefix: issued.row.prefix }, 'tenant creation repeated: a new owner key')
      return createdResponse(issued.tenant, issued.row.id, issued.key)
    }
    const replay = (body: CreatedTenant) => reply.code(200).header('idempotent-replayed', 'true').send(body)
    const repeated = await repeat()
    if (repeated !== undefined) return replay(repeated)
    const key = generateApiKey(id)
    const started = performance.now()
    // Cheap early answer for the common conflict (the unique key stays the guarantee): a dedicated
    // onboarding would otherwise create partitions only to remove them again.
    if (await fastify.ownerDb.selectFrom('tenants').select('id').where('slug', '=', request.body.slug).executeTakeFirst() !== undefined) {
      // A creation with this key may have committed since the look-up above.
      const again = await repeat()
      if (again !== undefined) return replay(again)
      throw conflict('a tenant with this slug already exists')
    }
    // The operator connection binds the new tenant like any request does, so the policies'
    // WITH CHECK accepts exactly this tenant's rows; the tenant row, its key and the audit event
    // commit together or not at all.
    const provision = async (dedicatedShard?: number) => withTenantTransaction(fastify.ownerPool, id, async ({ db }) => {
      const shard = dedicatedShard ?? await pooledShardFor(db, id)
      const row = await insertTenant(db, {
        id,
        name: request.body.name,
        slug: request.body.slug,
        placement,
        shard,
        creation_key_hash: creation?.keyHash ?? null,
        creation_request_hash: creation?.requestHash ?? null,
      })
      if (dedicatedShard !== undefined) await claimShard(db, dedicatedShard)
      // Said, not defaulted: a key that does not say has no owner rights (sql/0013_owner_rights_default.sql).
      await insertApiKey(db, { id: key.id, name: 'initial admin key', prefix: key.prefix, secret_hash: key.secretHash, scopes: [...ALL_SCOPES], owner_rights: true })
      const appended = await auditOperator(db, request.id, 'tenant.created', { type: 'tenant', id }, { slug: row.slug, placement, initial_key_prefix: key.prefix })
      return { row, appended }
    })
    let created
    try {
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
              request.log.warn({ err: releaseError, shard },
                'the partitions of a failed onboarding are left for the next sweep')
            })
            throw error
          }
        }))
      }
    } catch (error) {
      // Two at once with one idempotency key: the unique keys (slug, key) made this one wait for the
      // other to commit, and it repeats that one.
      if ((error as { code?: unknown }).code === '23505') {
        const again = await repeat()
        if (again !== undefined) return replay(again)
      }
      throw error
    }
    const tenant = created.row
    logAuditAppended(request.log, id, created.appended)
    request.log.info({ tenantId: id, slug: tenant.slug, placement, keyPrefix: key.prefix, ms: Math.round(performance.now() - started) }, 'tenant provisioned')
    return reply.code(201).send(createdResponse(tenant, key.id, key.key))
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

  fastify.post('/:id/api-keys', {
    schema: {
      summary: 'Issue an API key for a tenant (an owner key unless told otherwise)',
      description: 'For a tenant left without a working admin key. The key is returned once, in this response; ' +
        'only its hash is stored. Scopes default to read, write and admin; with admin, the key has owner rights, ' +
        'like the initial key. Recorded in the tenant\'s audit trail as `api_key.created` by the operator. 404 for ' +
        'an unknown or erased tenant, 409 while it is being erased; during a placement move it waits for the rows ' +
        'to move, as the tenant\'s requests do.',
      tags,
      params: IdParamsSchema,
      body: IssueOwnerKeySchema,
      response: { 201: CreatedApiKeySchema, ...problems(400, 401, 404, 409, 503) },
    },
    // Every field is optional, so no body at all is fine too (a JSON null is not).
    preValidation: async (request) => { if (request.body === undefined) request.body = {} },
  }, async (request, reply) => {
    const issued = await issueKey(fastify.ownerPool, request, request.params.id, {
      name: request.body.name ?? 'operator-issued key',
      scopes: request.body.scopes ?? [...ALL_SCOPES],
    })
    if (issued === undefined) throw notFound('tenant')
    return reply.code(201).send({ ...toApiKey(issued.row), key: issued.key })
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
        appended = await auditOperator(db, request.id, 'tenant.placement_changed', { type: 'tenant', id }, { from: change.from.placement, to: change.to.placement, rows_moved: change.rowsMoved })
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
        'streamed with constant memory, and a last line `{"signature": {...}}`: an HMAC-SHA256 with ' +
        'EXPORT_SIGNING_KEY over every byte before it. `npm run import` verifies it and loads the export ' +
        'into another deployment. 503 when no key is configured.',
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

type CreatedTenant = Static<typeof CreatedTenantSchema>

function createdResponse (tenant: Selectable<Tenants>, keyId: string, key: string): CreatedTenant {
  return { tenant: toOperatorTenant(tenant), api_key: { id: keyId, key, scopes: [...ALL_SCOPES] as Scope[] } }
}

/** issueOwnerKey for an operator request: 409 for a tenant being erased; the audit event logged once committed. */
async function issueKey (
  pool: pg.Pool, request: FastifyRequest, tenantId: string, spec: Omit<OwnerKeyRequest, 'requestId'>
): Promise<IssuedOwnerKey | undefined> {
  let issued
  try {
    issued = await issueOwnerKey(pool, tenantId, { ...spec, requestId: request.id })
  } catch (error) {
    if (error instanceof TenantErasing) throw conflict(error.message, 'tenant-erasing')
    throw error
  }
  if (issued !== undefined) {
    logAuditAppended(request.log, tenantId, issued.appended)
    request.log.info({ tenantId, keyPrefix: issued.row.prefix, scopes: issued.row.scopes }, 'operator issued a key')
  }
  return issued
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
