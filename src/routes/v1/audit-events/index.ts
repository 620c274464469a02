import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { badRequest } from '../../../errors.ts'
import { toAuditEvent, toAuditVerification } from '../../../mappers/audit.ts'
import { listAuditEvents, verifyAuditChain, VERIFY_STEP_MAX } from '../../../repositories/audit-events.ts'
import { PageQuerySchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import { AuditEventPage, AuditVerificationSchema } from '../../../schemas/audit.ts'

const tags = ['audit']

/**
 * The audit trail names every member (user id, role) and every key (name, prefix, scopes, owner
 * rights) that /v1/members and /v1/api-keys show to the admin scope only: it needs that scope too,
 * for the list and the verification alike. A refusal is logged as access_denied by the pipeline.
 */
const ADMIN_ONLY = 'Needs the admin scope, like /v1/members and /v1/api-keys: the trail names members, their roles ' +
  'and keys.'

const VerifyQuerySchema = Type.Object({
  anchor_seq: Type.Optional(Type.Integer({
    minimum: 1,
    description: 'with anchor_hash: a chain position whose hash you kept outside this service ' +
      '(e.g. from its audit_appended log line)',
  })),
  anchor_hash: Type.Optional(Type.String({
    pattern: '^[0-9a-fA-F]{64}$',
    maxLength: 64,
    description: 'with anchor_seq: the hex SHA-256 recorded for that position',
  })),
  from_seq: Type.Optional(Type.Integer({
    minimum: 1,
    description: 'start here instead of at the newest checkpoint (1: the first event), so that you can walk the ' +
      'whole trail yourself in bounded calls, each from the last one\'s verified_through + 1; records no checkpoint',
  })),
  max_events: Type.Optional(Type.Integer({
    minimum: 1,
    maximum: VERIFY_STEP_MAX,
    default: VERIFY_STEP_MAX,
    description: 'the most events this call recomputes after its checkpoint',
  })),
}, { additionalProperties: false })

const auditEvents: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    config: { scope: 'admin' },
    schema: {
      summary: "The tenant's audit trail, newest first",
      operationId: 'listAuditEvents',
      description: ADMIN_ONLY,
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(AuditEventPage, 'a page of audit events, newest first'), ...problems(400, 401, 403, 503) },
    },
  }, async (request) => paginate(request.query, (page) => listAuditEvents(request.db, page), toAuditEvent))

  fastify.get('/verify', {
    // Records a checkpoint (bookkeeping, not a change the caller asked for), so its transaction is
    // not READ ONLY; it commits with the answer like any request's.
    config: { scope: 'admin', writes: true },
    schema: {
      summary: "Verify the tenant's audit hash chain, in bounded steps",
      operationId: 'verifyAuditChain',
      description: `${ADMIN_ONLY} ` +
        'Starts from the newest checkpoint (how far an earlier verification got): checks that the event there ' +
        'still carries the hash it had and still links to its predecessor, then recomputes at most max_events ' +
        'events after it, reporting the first broken link: an event edited, removed or reordered after it was ' +
        'written. When it reaches the head, the head must point at the last event. If all holds it records a ' +
        'checkpoint where it stopped (so this GET writes, in its own transaction); complete: false means events ' +
        'remain after verified_through and the next call continues from there, so the cost of a call does not ' +
        'grow with the trail. Events before the starting checkpoint are not re-examined: an old event edited ' +
        "since it was verified is caught by the operator's full verification " +
        '(POST /admin/v1/tenants/:id/audit/verify). With anchor_seq and anchor_hash, also checks the chain ' +
        'against that externally kept hash, which catches a chain rewritten as a whole.',
      tags,
      querystring: VerifyQuerySchema,
      response: { 200: Ref(AuditVerificationSchema, 'what this call verified'), ...problems(400, 401, 403, 503) },
    },
  }, async (request) => {
    const { anchor_seq: seq, anchor_hash: hash, max_events: maxEvents, from_seq: fromSeq } = request.query
    if ((seq === undefined) !== (hash === undefined)) {
      const missing = seq === undefined ? 'anchor_seq' : 'anchor_hash'
      throw badRequest('anchor_seq and anchor_hash go together',
        [{ path: `querystring/${missing}`, message: 'is required with the other anchor parameter' }])
    }
    const anchor = seq !== undefined && hash !== undefined ? { seq, hash } : undefined
    const options = { anchor, maxEvents: maxEvents ?? VERIFY_STEP_MAX, fromSeq }
    const result = await verifyAuditChain(request.db, request.tenant!, options)
    return toAuditVerification(result)
  })
}

export default auditEvents
