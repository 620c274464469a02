import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { badRequest } from '../../../errors.ts'
import { toAuditEvent } from '../../../mappers/audit.ts'
import { listAuditEvents, verifyAuditChain } from '../../../repositories/audit-events.ts'
import { PageQuerySchema, paginate, problems } from '../../../schemas/common.ts'
import { AuditEventPage, AuditVerificationSchema } from '../../../schemas/audit.ts'

const tags = ['audit']

const VerifyQuerySchema = Type.Object({
  anchor_seq: Type.Optional(Type.Integer({ minimum: 1, description: 'with anchor_hash: a chain position whose hash you kept outside this service (e.g. from its audit_appended log line)' })),
  anchor_hash: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{64}$', description: 'with anchor_seq: the hex SHA-256 recorded for that position' })),
}, { additionalProperties: false })

const auditEvents: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    schema: {
      summary: "The tenant's audit trail, newest first",
      tags,
      querystring: PageQuerySchema,
      response: { 200: AuditEventPage, ...problems(400, 401, 403, 503) },
    },
  }, async (request) => paginate(request.query, (page) => listAuditEvents(request.db, page), toAuditEvent))

  fastify.get('/verify', {
    schema: {
      summary: "Verify the tenant's audit hash chain",
      description: 'Recomputes every hash from the first event on and reports the first broken link: an event edited, removed or reordered after it was written. ' +
        'With anchor_seq and anchor_hash, also checks the chain against that externally kept hash, which catches a chain rewritten as a whole.',
      tags,
      querystring: VerifyQuerySchema,
      response: { 200: AuditVerificationSchema, ...problems(400, 401, 403, 503) },
    },
  }, async (request) => {
    const { anchor_seq: seq, anchor_hash: hash } = request.query
    if ((seq === undefined) !== (hash === undefined)) {
      const missing = seq === undefined ? 'anchor_seq' : 'anchor_hash'
      throw badRequest('anchor_seq and anchor_hash go together', [{ path: `querystring/${missing}`, message: 'is required with the other anchor parameter' }])
    }
    const anchor = seq !== undefined && hash !== undefined ? { seq, hash } : undefined
    const result = await verifyAuditChain(request.db, request.tenant!, anchor)
    return { ok: result.broken === null, events: result.events, first_broken: result.broken }
  })
}

export default auditEvents
