import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { toAuditEvent } from '../../../mappers/audit.ts'
import { listAuditEvents, verifyAuditChain } from '../../../repositories/audit-events.ts'
import { PageQuerySchema, paginate, problems } from '../../../schemas/common.ts'
import { AuditEventPage, AuditVerificationSchema } from '../../../schemas/audit.ts'

const tags = ['audit']

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
      description: 'Recomputes every hash from the first event on and reports the first broken link: an event edited, removed or reordered after it was written.',
      tags,
      response: { 200: AuditVerificationSchema, ...problems(401, 403, 503) },
    },
  }, async (request) => {
    const result = await verifyAuditChain(request.db, request.tenant!)
    return { ok: result.broken === null, events: result.events, first_broken: result.broken }
  })
}

export default auditEvents
