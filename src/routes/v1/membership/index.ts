import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { audit } from '../../../audit.ts'
import { forbidden, notFound } from '../../../errors.ts'
import { toMember } from '../../../mappers/identity.ts'
import { acceptMembership } from '../../../repositories/memberships.ts'
import { problems, Ref } from '../../../schemas/common.ts'
import { MemberSchema } from '../../../schemas/identity.ts'

/** The caller's own membership: a user accepts an invitation here, with their own token. */
const membership: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/accept', {
    // The one route a pending member reaches (and an active member too: accepting twice is a no-op).
    config: { pendingMember: true },
    schema: {
      summary: 'Accept your membership of a tenant',
      operationId: 'acceptMembership',
      description: 'Adding a member records an invitation that grants nothing until the user accepts it here, with ' +
        'their own token, naming the tenant with x-tenant-id (or the token\'s tid claim). Until then the membership ' +
        'is pending: the user has no access to the tenant, and it does not count as one of the user\'s tenants. API ' +
        'keys cannot accept.',
      tags: ['members'],
      response: { 200: Ref(MemberSchema, 'your membership, now active'), ...problems(400, 401, 403, 404, 503) },
    },
  }, async (request) => {
    const caller = request.tenant!
    if (caller.actorType !== 'user') {
      throw forbidden('only a user can accept their own membership, with their own token')
    }
    const result = await acceptMembership(request.db, caller.actorId)
    if (result === undefined) throw notFound('membership')
    const { row, acceptedNow } = result
    if (acceptedNow) {
      await audit(request, 'member.accepted', { type: 'member', id: row.user_id }, { role: row.role }, toMember(row))
    }
    return toMember(row)
  })
}

export default membership
