import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { newId } from '../../../ids.ts'
import { audit } from '../../../audit.ts'
import { accessDenied } from '../../../auth/access-log.ts'
import { hasOwnerRights, ROLE_SCOPES, scopesBeyond } from '../../../auth/identity.ts'
import { conflict, forbidden, notFound } from '../../../errors.ts'
import { toMember } from '../../../mappers/identity.ts'
import { deleteMembership, findMembershipByUser, insertMembership, listMemberships, lockOwners } from '../../../repositories/memberships.ts'
import { PageQuerySchema, paginate, problems } from '../../../schemas/common.ts'
import { CreateMemberSchema, MemberPage, MemberSchema, UserIdParamsSchema } from '../../../schemas/identity.ts'

const tags = ['members']
const errors = [400, 401, 403, 503]
const config = { scope: 'admin' as const }

const members: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    config,
    schema: {
      summary: 'Add a member',
      description: 'A credential may give a member only scopes it holds itself (403 otherwise). Only a credential with owner ' +
        'rights (an owner, or an API key with owner rights) may add an owner. An existing member is a 409.',
      tags,
      body: CreateMemberSchema,
      response: { 201: MemberSchema, ...problems(...errors, 409) },
    },
  }, async (request, reply) => {
    const caller = request.tenant!
    const beyond = scopesBeyond(ROLE_SCOPES[request.body.role], caller.scopes)
    if (beyond.length > 0) {
      throw accessDenied(request, forbidden(`the ${request.body.role} role has scopes this credential lacks (${beyond.join(', ')})`), 'role beyond the credential\'s scopes', { role: request.body.role })
    }
    if (request.body.role === 'owner' && !await hasOwnerRights(caller, request.db)) {
      throw accessDenied(request, forbidden('only an owner can add an owner'), 'adding an owner needs owner rights', { role: 'owner' })
    }
    const row = await insertMembership(request.db, { id: newId(), user_id: request.body.user_id, role: request.body.role })
    await audit(request, 'member.added', { type: 'member', id: row.user_id }, { role: row.role })
    return reply.code(201).send(toMember(row))
  })

  fastify.get('/', {
    config,
    schema: {
      summary: 'List members, newest first',
      tags,
      querystring: PageQuerySchema,
      response: { 200: MemberPage, ...problems(...errors) },
    },
  }, async (request) => paginate(request.query, (page) => listMemberships(request.db, page), toMember))

  fastify.delete('/:user_id', {
    config,
    schema: {
      summary: 'Remove a member',
      description: 'The last owner cannot be removed (409). Only a credential with owner rights (an owner, or an API key ' +
        'with owner rights) may remove an owner.',
      tags,
      params: UserIdParamsSchema,
      response: { 204: { type: 'null', description: 'removed' }, ...problems(...errors, 404, 409) },
    },
  }, async (request, reply) => {
    const owners = await lockOwners(request.db)
    const target = await findMembershipByUser(request.db, request.params.user_id)
    if (target === undefined) throw notFound('member')
    if (target.role === 'owner') {
      if (!await hasOwnerRights(request.tenant!, request.db)) {
        throw accessDenied(request, forbidden('only an owner can remove an owner'), 'removing an owner needs owner rights', { member: target.user_id })
      }
      // Withdrawing an owner's invitation never leaves the tenant without an (accepted) owner.
      if (owners.includes(target.user_id) && owners.length <= 1) throw conflict('the last owner cannot be removed', 'last-owner')
    }
    await deleteMembership(request.db, target.user_id)
    await audit(request, 'member.removed', { type: 'member', id: target.user_id }, { role: target.role })
    request.afterCommit!.push(() => fastify.awaitAuthNotification(`member:${request.tenant!.tenantId}:${target.user_id}`))
    return reply.code(204).send()
  })
}

export default members
