import type { IncomingHttpHeaders } from 'node:http'
import { badRequest, unauthorized } from '../errors.ts'
import { hasNul } from '../schemas/common.ts'
import { looksLikeApiKey, parseApiKey, type ParsedApiKey } from './api-keys.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

/** A credential presented to a tenant route, checked for form but not yet against the database. */
export type TenantCredential =
  | { kind: 'api_key', key: ParsedApiKey }
  | { kind: 'user', userId: string, claimedTenantId: string | undefined }

/** Why a credential was refused: logged (never sent) alongside a public prefix of the credential. */
export class CredentialRejected extends Error {
  override name = 'CredentialRejected'
  constructor (readonly reason: string, readonly publicMessage: string, readonly credentialPrefix: string | undefined) {
    super(reason)
  }
}

/** The bearer token of the Authorization header. */
export function bearerToken (headers: IncomingHttpHeaders): string {
  const header = headers.authorization
  if (header === undefined || header === '') {
    throw new CredentialRejected('missing credentials', 'missing credentials: send authorization: Bearer <token>',
      undefined)
  }
  const match = /^Bearer +(\S+) *$/i.exec(header)
  if (match === null) {
    throw new CredentialRejected('not a Bearer credential', 'the authorization header must use the Bearer scheme',
      undefined)
  }
  return match[1]!
}

export type JwtVerifier = (token: string) => Record<string, unknown>

function jwtFailure (error: unknown): CredentialRejected {
  const code = (error as { code?: string }).code ?? 'unknown'
  const expired = code === 'FAST_JWT_EXPIRED'
  const detail = expired ? 'the token has expired' : 'the token is invalid'
  return new CredentialRejected(`jwt rejected (${code})`, detail, 'jwt')
}

/**
 * Classifies and checks the form of a tenant credential: a rowfence API key (well-formed, checksum
 * valid) or a JWT (signature, algorithm, exp and sub verified by `verifyJwt`).
 */
export function presentedCredential (
  headers: IncomingHttpHeaders, verifyJwt: JwtVerifier | undefined
): TenantCredential {
  const token = bearerToken(headers)
  if (looksLikeApiKey(token)) {
    const key = parseApiKey(token)
    if (key === undefined) {
      throw new CredentialRejected('malformed API key', 'the credential is not a valid API key', token.slice(0, 12))
    }
    return { kind: 'api_key', key }
  }
  if (JWT_SHAPE.test(token)) {
    if (verifyJwt === undefined) {
      throw new CredentialRejected('jwt presented but JWT authentication is not configured', 'the token is invalid',
        'jwt')
    }
    let claims: Record<string, unknown>
    try {
      claims = verifyJwt(token)
    } catch (error) {
      throw jwtFailure(error)
    }
    const { sub, tid } = claims
    // The same rule as a member's user_id (1..255 characters, no NUL: PostgreSQL text cannot hold it).
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > 255 || hasNul(sub)) {
      throw new CredentialRejected('jwt sub is not a user id', 'the token is invalid', 'jwt')
    }
    if (tid !== undefined && (typeof tid !== 'string' || !UUID.test(tid))) {
      throw new CredentialRejected('jwt tid is not a UUID', 'the token is invalid', `jwt:${sub}`)
    }
    return { kind: 'user', userId: sub, claimedTenantId: tid?.toLowerCase() }
  }
  throw new CredentialRejected('unrecognised credential', 'the credential is not a valid API key or token', undefined)
}

/** Turns a refusal into the 401 problem the client sees. */
export function unauthorizedFor (rejection: CredentialRejected): ReturnType<typeof unauthorized> {
  return unauthorized(rejection.publicMessage)
}

/**
 * The optional x-tenant-id header: undefined when absent; exactly one UUID otherwise (Node joins a
 * repeated header with ", ", which fails the UUID check like an empty or malformed value).
 */
export function requestedTenant (headers: IncomingHttpHeaders): string | undefined {
  const value = headers['x-tenant-id']
  if (value === undefined) return undefined
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw badRequest('x-tenant-id must be exactly one UUID',
      [{ path: 'headers/x-tenant-id', message: 'must be a single UUID' }])
  }
  return value.toLowerCase()
}
