import type { LightMyRequestResponse } from 'fastify'
import { parseApiKey } from '../../src/auth/api-keys.ts'
import { as, type TestApp } from './app.ts'
import { inAnHour, signUserToken } from './tokens.ts'

/**
 * Adds a member with a key, as a tenant admin does, and — when that succeeded — accepts the
 * invitation with the user's own token, as the user does (a membership grants nothing until then).
 * Returns the answer to the addition.
 */
export async function addMember (
  ctx: TestApp,
  by: { key: string },
  payload: unknown
): Promise<LightMyRequestResponse> {
  const added = await ctx.app.inject(as(by, {
    method: 'POST',
    url: '/v1/members',
    payload: payload as Record<string, unknown>,
  }))
  if (added.statusCode !== 201) return added
  const tenantId = parseApiKey(by.key)!.tenantId
  const userId = added.json<{ user_id: string }>().user_id
  const accepted = await ctx.app.inject({
    method: 'POST',
    url: '/v1/membership/accept',
    headers: { authorization: `Bearer ${signUserToken({ sub: userId, exp: inAnHour() })}`, 'x-tenant-id': tenantId },
  })
  if (accepted.statusCode !== 200) {
    throw new Error(`accepting the membership failed: ${accepted.statusCode} ${accepted.body}`)
  }
  return added
}
