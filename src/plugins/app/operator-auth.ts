import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { logAccessDenied } from '../../auth/access-log.ts'
import { looksLikeApiKey } from '../../auth/api-keys.ts'
import { bearerToken, CredentialRejected } from '../../auth/credentials.ts'
import { unauthorized } from '../../errors.ts'

export interface OperatorAuthOptions {
  adminToken: string
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

/**
 * Operator authentication for /admin/v1: the ADMIN_TOKEN bearer and nothing else. Both sides are
 * hashed before the constant-time comparison, so neither the token's length nor its content leaks
 * through timing. Tenant credentials (API keys, JWTs) never match and are refused like any other.
 */
async function operatorAuth (fastify: FastifyInstance, options: OperatorAuthOptions): Promise<void> {
  const expected = digest(options.adminToken)
  // An address that failed too often is refused first (a wrong token counts as a failure: logAccessDenied).
  fastify.addHook('onRequest', fastify.rateLimits.refuseBlockedAddress)
  fastify.addHook('onRequest', async (request) => {
    let reason: string | undefined
    let token: string | undefined
    try {
      token = bearerToken(request.headers)
    } catch (error) {
      if (!(error instanceof CredentialRejected)) throw error
      reason = error.reason
    }
    if (token !== undefined && !timingSafeEqual(digest(token), expected)) {
      reason = looksLikeApiKey(token) ? 'tenant API key on an operator route' : 'wrong operator token'
    }
    if (reason !== undefined) {
      const prefix = token !== undefined && looksLikeApiKey(token) ? token.slice(0, 26) : undefined
      throw logAccessDenied(request, unauthorized('operator routes accept only the operator token'), reason, prefix)
    }
  })
}

export default fp(operatorAuth, { name: 'operator-auth', dependencies: ['errors', 'rate-limit'] })
