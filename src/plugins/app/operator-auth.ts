import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { looksLikeApiKey } from '../../auth/api-keys.ts'
import { bearerToken } from '../../auth/credentials.ts'
import { unauthorized } from '../../errors.ts'

export interface OperatorAuthOptions {
  adminToken: string
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

/**
 * Operator authentication for /admin/v1: the ADMIN_TOKEN bearer and nothing else. Both sides are
 * hashed before the constant-time comparison, so neither the token's length nor its content leaks
 * through timing. Tenant API keys are refused outright.
 */
async function operatorAuth (fastify: FastifyInstance, options: OperatorAuthOptions): Promise<void> {
  const expected = digest(options.adminToken)
  fastify.addHook('onRequest', async (request) => {
    const token = bearerToken(request.headers)
    if (looksLikeApiKey(token)) {
      request.log.info({ reason: 'tenant credential on operator route' }, 'authentication failed')
      throw unauthorized('operator routes accept only the operator token')
    }
    if (!timingSafeEqual(digest(token), expected)) {
      request.log.info({ reason: 'wrong operator token' }, 'authentication failed')
      throw unauthorized('the operator token is invalid')
    }
  })
}

export default fp(operatorAuth, { name: 'operator-auth', dependencies: ['errors'] })
