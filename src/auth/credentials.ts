import type { IncomingHttpHeaders } from 'node:http'
import { badRequest, unauthorized } from '../errors.ts'
import { looksLikeApiKey, parseApiKey, type ParsedApiKey } from './api-keys.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** The bearer token of the Authorization header; throws 401 when absent or not a Bearer credential. */
export function bearerToken (headers: IncomingHttpHeaders): string {
  const header = headers.authorization
  if (header === undefined || header === '') throw unauthorized('missing credentials: send authorization: Bearer <key>')
  const match = /^Bearer +(\S+) *$/i.exec(header)
  if (match === null) throw unauthorized('the authorization header must use the Bearer scheme')
  return match[1]!
}

/** A syntactically valid API key from the request (not yet checked against the database). */
export function presentedApiKey (headers: IncomingHttpHeaders): ParsedApiKey {
  const token = bearerToken(headers)
  const key = looksLikeApiKey(token) ? parseApiKey(token) : undefined
  if (key === undefined) throw unauthorized('the credential is not a valid API key')
  return key
}

/**
 * The optional x-tenant-id header: undefined when absent; exactly one UUID otherwise (Node joins a
 * repeated header with ", ", which fails the UUID check like an empty or malformed value).
 */
export function requestedTenant (headers: IncomingHttpHeaders): string | undefined {
  const value = headers['x-tenant-id']
  if (value === undefined) return undefined
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw badRequest('x-tenant-id must be exactly one UUID', [{ path: 'headers/x-tenant-id', message: 'must be a single UUID' }])
  }
  return value.toLowerCase()
}
