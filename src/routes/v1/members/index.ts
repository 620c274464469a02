import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { newId } from '../../../ids.ts'
import { audit } from '../../../audit.ts'
import { accessDenied } from '../../../auth/access-log.ts'
import { hasOwnerRights, ROLE_SCOPES, scopesBeyond, type MemberRole } from '../../../auth/identity.ts'
import { conflict, forbidden, notFound } from '../../../errors.ts'
import { toMember } from '../../../mappers/identity.ts'
import {
  deleteMembership, insertMembership, listMemberships, lockMembershipByUser, lockOwners, updateMembershipRole,
} from '../../../repositories/memberships.ts'
import { PageQuerySchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import {
  CreateMemberSchema, MemberPage, MemberSchema, UpdateMemberSchema, UserIdParamsSchema,
} from '../../../schemas/identity.ts'

const tags = ['members']
const errors = [400, 401, 403, 503]
const config = { scope: 'admin' as const }

/** A credential gives no member a role with scopes it lacks itself (adding and changing alike). */
function refuseRoleBeyondCaller (request: FastifyRequest, role: MemberRole): void {
  const beyond = scopesBeyond(ROLE_SCOPES[role], request.tenant!.scopes)
  if (beyond.length > 0) {
    throw accessDenied(request, forbidden(`the ${role} role has scopes this credential lacks (${beyond.join(', ')})`),
      'role beyond the credential\'s scopes', { role })
  }
}

const members: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    config,
    schema: {
      summary: 'Add a member',
      operationId: 'addMember',
      description: 'A credential may give a member only scopes it holds itself (403 otherwise). Only a credential ' +
        'with owner rights (an owner, or an API key with owner rights) may add an owner. An existing member is a 409.',
      tags,
      body: CreateMemberSchema,
      response: { 201: Ref(MemberSchema, 'the invitation: a pending member'), ...problems(...errors, 409) },
    },
  }, async (request, reply) => {
    const { user_id: userId, role } = request.body
    refuseRoleBeyondCaller(request, role)
    if (role === 'owner' && !await hasOwnerRights(request.tenant!, request.db)) {
      throw accessDenied(request, forbidden('only an owner can add an owner'), 'adding an owner needs owner rights',
        { role: 'owner' })
    }
    const row = await insertMembership(request.db, { id: newId(), user_id: userId, role })
    const member = toMember(row)
    await audit(request, 'member.added', { type: 'member', id: row.user_id }, { role: row.role }, member)
    return reply.code(201).send(member)
  })

  fastify.get('/', {
    config,
    schema: {
      summary: 'List members, newest first',
      operationId: 'listMembers',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(MemberPage, 'a page of members, newest first'), ...problems(...errors) },
    },
  }, async (request) => paginate(request.query, (page) => listMemberships(request.db, page), toMember))

  fastify.patch('/:user_id', {
    config,
    schema: {
      summary: 'Change a member\'s role',
      operationId: 'changeMemberRole',
      description: 'The same rules as adding and removing: a credential may give only a role whose scopes it holds ' +
        'itself (403 otherwise); only a credential with owner rights may promote to or demote from owner (403); the ' +
        'last accepted owner cannot be demoted (409, last-owner). A pending member stays pending. The new role ' +
        'applies from the member\'s next request, on every server instance. API keys survive their creator: ' +
        'owner-rights keys a demoted owner created keep their rights, so revoke those you no longer trust (the ' +
        'key list shows `owner_rights`).',
      tags,
      params: UserIdParamsSchema,
      body: UpdateMemberSchema,
      response: { 200: Ref(MemberSchema, 'the member with its new role'), ...problems(...errors, 404, 409) },
    },
  }, async (request) => {
    const caller = request.tenant!
    const role = request.body.role
    refuseRoleBeyondCaller(request, role)
    // Owners first, then the member, in the order removal locks them: concurrent changes serialise.
    const owners = await lockOwners(request.db)
    const target = await lockMembershipByUser(request.db, request.params.user_id)
    if (target === undefined) throw notFound('member')
    if (target.role === role) return toMember(target)
    if ((target.role === 'owner' || role === 'owner') && !await hasOwnerRights(caller, request.db)) {
      throw accessDenied(request, forbidden('only an owner can promote to or demote from owner'),
        'changing an owner role needs owner rights', { member: target.user_id, role })
    }
    if (target.role === 'owner' && owners.includes(target.user_id) && owners.length <= 1) {
      throw conflict('the last owner cannot be demoted: make another member owner first', 'last-owner')
    }
    const row = await updateMembershipRole(request.db, target.user_id, role)
    if (row === undefined) throw notFound('member')
    await audit(request, 'member.role_changed', { type: 'member', id: row.user_id },
      { old_role: target.role, new_role: row.role }, toMember(row))
    // Answer once the change has gone round, so no instance's credential cache still holds the old role.
    request.afterCommit!.push(() => fastify.awaitAuthNotification(`member:${caller.tenantId}:${row.user_id}`))
    return toMember(row)
  })

  fastify.delete('/:user_id', {
    config,
    schema: {
      summary: 'Remove a member',
      operationId: 'removeMember',
      description: 'The last owner cannot be removed (409). Only a credential with owner rights (an owner, or an ' +
        'API key with owner rights) may remove an owner. API keys survive their creator: owner-rights keys a ' +
        'removed owner created keep their rights, so revoke those you no longer trust (the key list shows ' +
        '`owner_rights`).',
      tags,
      params: UserIdParamsSchema,
      response: { 204: { type: 'null', description: 'removed' }, ...problems(...errors, 404, 409) },
    },
  }, async (request, reply) => {
    const owners = await lockOwners(request.db)
    const target = await lockMembershipByUser(request.db, request.params.user_id)
    if (target === undefined) throw notFound('member')
    if (target.role === 'owner') {
      if (!await hasOwnerRights(request.tenant!, request.db)) {
        throw accessDenied(request, forbidden('only an owner can remove an owner'),
          'removing an owner needs owner rights', { member: target.user_id })
      }
      // Withdrawing an owner's invitation never leaves the tenant without an (accepted) owner.
      if (owners.includes(target.user_id) && owners.length <= 1) {
        throw conflict('the last owner cannot be removed', 'last-owner')
      }
    }
    await deleteMembership(request.db, target.user_id)
    await audit(request, 'member.removed', { type: 'member', id: target.user_id }, { role: target.role },
      toMember(target))
    const notification = `member:${request.tenant!.tenantId}:${target.user_id}`
    request.afterCommit!.push(() => fastify.awaitAuthNotification(notification))
    return reply.code(204).send()
  })
}

export default members
