import { createSigner } from 'fast-jwt'
import { TEST_JWT_SECRET } from './app.ts'

/** A user JWT as an identity provider would issue it (HS256 with the test apps' secret by default). */
export function signUserToken (
  claims: Record<string, unknown>,
  options: { key?: string, expiresInMs?: number, algorithm?: 'HS256' | 'RS256' } = {}
): string {
  const sign = createSigner({
    key: options.key ?? TEST_JWT_SECRET,
    algorithm: options.algorithm ?? 'HS256',
    ...(options.expiresInMs !== undefined && { expiresIn: options.expiresInMs }),
  })
  return sign(claims)
}

/** An unsigned token (`alg: none`), the classic forgery. */
export function unsignedToken (claims: Record<string, unknown>): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`
}

export const inAnHour = (): number => Math.floor(Date.now() / 1000) + 3600
