import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { crc32 } from 'node:zlib'
import { parse as parseUuid, stringify as stringifyUuid } from 'uuid'
import { newId } from '../ids.ts'

/**
 * API key format: `rfk_` + base64url(key id, 16 bytes) + base64url(tenant id, 16 bytes)
 * + base64url(secret, 32 bytes from the CSPRNG) + base64url(CRC-32 of everything before it).
 *
 * - The fixed `rfk_` prefix and the checksum let secret scanners recognise a leaked key offline,
 *   and let us reject typos and garbage without touching the database.
 * - The key names its own tenant, so it is looked up under that tenant's RLS binding: resolving a
 *   key never needs a cross-tenant read. A forged tenant part only finds nothing (401).
 * - Only SHA-256(key) is stored. With 256 bits of secret a slow hash adds nothing; the comparison
 *   is constant-time.
 */
export const API_KEY_PREFIX = 'rfk_'
const UUID_CHARS = 22
const SECRET_CHARS = 43
const CHECKSUM_CHARS = 6
const BODY_CHARS = UUID_CHARS * 2 + SECRET_CHARS
export const API_KEY_LENGTH = API_KEY_PREFIX.length + BODY_CHARS + CHECKSUM_CHARS
const KEY_PATTERN = new RegExp(`^${API_KEY_PREFIX}[A-Za-z0-9_-]{${BODY_CHARS + CHECKSUM_CHARS}}$`)

export type Scope = 'read' | 'write' | 'admin'
export const ALL_SCOPES: readonly Scope[] = ['read', 'write', 'admin']

export interface NewApiKey {
  id: string
  key: string
  prefix: string
  secretHash: Buffer
}

export interface ParsedApiKey {
  keyId: string
  tenantId: string
  prefix: string
  secretHash: Buffer
}

function checksum (body: string): string {
  const buf = Buffer.alloc(4)
  buf.writeUInt32BE(crc32(body))
  return buf.toString('base64url')
}

export function hashApiKey (key: string): Buffer {
  return createHash('sha256').update(key).digest()
}

/** Assembles a key from its parts (generateApiKey draws the id and the secret). */
export function formatApiKey (id: string, tenantId: string, secret: Buffer): NewApiKey {
  if (secret.length !== 32) throw new TypeError('an API key secret is 32 bytes')
  const body = Buffer.from(parseUuid(id)).toString('base64url') +
    Buffer.from(parseUuid(tenantId)).toString('base64url') +
    secret.toString('base64url')
  const key = API_KEY_PREFIX + body + checksum(API_KEY_PREFIX + body)
  return { id, key, prefix: key.slice(0, API_KEY_PREFIX.length + UUID_CHARS), secretHash: hashApiKey(key) }
}

export function generateApiKey (tenantId: string): NewApiKey {
  return formatApiKey(newId(), tenantId, randomBytes(32))
}

export function looksLikeApiKey (token: string): boolean {
  return token.startsWith(API_KEY_PREFIX)
}

/** Parses a presented key; undefined when it is not a well-formed rowfence key. */
export function parseApiKey (token: string): ParsedApiKey | undefined {
  if (token.length !== API_KEY_LENGTH || !KEY_PATTERN.test(token)) return undefined
  const signed = token.slice(0, -CHECKSUM_CHARS)
  const expected = Buffer.from(checksum(signed))
  const given = Buffer.from(token.slice(-CHECKSUM_CHARS))
  if (!timingSafeEqual(expected, given)) return undefined
  const start = API_KEY_PREFIX.length
  const keyBytes = Buffer.from(token.slice(start, start + UUID_CHARS), 'base64url')
  const tenantBytes = Buffer.from(token.slice(start + UUID_CHARS, start + 2 * UUID_CHARS), 'base64url')
  if (keyBytes.length !== 16 || tenantBytes.length !== 16) return undefined
  try {
    return {
      keyId: stringifyUuid(keyBytes),
      tenantId: stringifyUuid(tenantBytes),
      prefix: token.slice(0, start + UUID_CHARS),
      secretHash: hashApiKey(token),
    }
  } catch {
    return undefined // bytes that are not a valid UUID (bad version or variant bits)
  }
}

/** Constant-time comparison of a stored hash with the hash of the presented key. */
export function secretMatches (stored: Uint8Array, presented: Uint8Array): boolean {
  return stored.length === presented.length && timingSafeEqual(stored, presented)
}
