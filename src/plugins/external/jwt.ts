import fastifyJwt from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { JwtSettings } from '../../config.ts'

export interface JwtPluginOptions {
  settings: JwtSettings | undefined
}

/**
 * JWT verification for users of an identity provider. The algorithm is pinned to the configured
 * one, so `alg: none` and algorithm confusion (an HS256 token "signed" with our RS256 public key)
 * fail verification; `exp` and `sub` are required; clocks may disagree by five seconds.
 * Without settings nothing is registered and the tenant pipeline refuses JWTs.
 */
async function jwtPlugin (fastify: FastifyInstance, options: JwtPluginOptions): Promise<void> {
  const settings = options.settings
  if (settings === undefined) return
  await fastify.register(fastifyJwt, {
    secret: settings.algorithm === 'HS256' ? settings.key : { public: settings.key },
    verify: {
      algorithms: [settings.algorithm],
      requiredClaims: ['exp', 'sub'],
      clockTolerance: 5_000,
      ...(settings.issuer !== undefined && { allowedIss: settings.issuer }),
      ...(settings.audience !== undefined && { allowedAud: settings.audience }),
    },
  })
}

export default fp(jwtPlugin, { name: 'jwt' })
