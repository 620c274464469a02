import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'

/**
 * Webhook signing secrets at rest: AES-256-GCM under a server key, as
 * `v1.<base64url iv>.<base64url ciphertext>.<base64url tag>`. A database dump alone yields no secret.
 */
const VERSION = 'v1'
const ALGORITHM = 'aes-256-gcm'
const KEY_BYTES = 32
const IV_BYTES = 12
const TAG_BYTES = 16
const BASE64URL = /^[A-Za-z0-9_-]*$/

function checkKey (key: Buffer): void {
  if (key.length !== KEY_BYTES) throw new Error(`a secret-box key is ${KEY_BYTES} bytes, not ${key.length}`)
}

// `context` is the AAD: callers pass what the secret belongs to (`${tenantId}:${endpointId}`), so a
// sealed value copied into another row does not open there.
function aad (context: string | undefined): Buffer | undefined {
  return context === undefined ? undefined : Buffer.from(context, 'utf8')
}

/** Seals `plaintext` under `key`, bound to `context` when given; a fresh IV each time. */
export function sealSecret (key: Buffer, plaintext: string, context?: string): string {
  checkKey(key)
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES })
  const data = aad(context)
  if (data !== undefined) cipher.setAAD(data)
  const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
  const parts = [iv, ciphertext, cipher.getAuthTag()].map((part) => part.toString('base64url'))
  return [VERSION, ...parts].join('.')
}

const CANNOT_OPEN = 'a sealed webhook secret did not open: wrong server key, wrong context, or an altered value'

/**
 * The plaintext of a value sealed by sealSecret with the same key and context. Throws, returning nothing
 * decrypted, when the value is malformed or does not authenticate.
 */
export function openSecret (key: Buffer, sealed: string, context?: string): string {
  checkKey(key)
  const parts = sealed.split('.')
  if (parts.length !== 4 || parts[0] !== VERSION || !parts.every((part) => BASE64URL.test(part))) {
    throw new Error('a sealed webhook secret is v1.<iv>.<ciphertext>.<tag> in base64url')
  }
  const [iv, ciphertext, tag] = parts.slice(1).map((part) => Buffer.from(part, 'base64url')) as [Buffer, Buffer, Buffer]
  // An explicit length: GCM would otherwise accept a tag cut short, which is easier to forge.
  if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES) throw new Error(CANNOT_OPEN)
  const decipher = createDecipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES })
  decipher.setAuthTag(tag)
  const data = aad(context)
  if (data !== undefined) decipher.setAAD(data)
  try {
    // Nothing is returned until final() has checked the tag.
    return Buffer.concat([decipher.update(ciphertext), decipher.final()]).toString('utf8')
  } catch (error) {
    throw new Error(CANNOT_OPEN, { cause: error })
  }
}

/** The server key from its configured text: base64 or base64url of exactly 32 bytes. */
export function parseServerKey (text: string): Buffer {
  const trimmed = text.trim()
  const standard = /^[A-Za-z0-9+/]+={0,2}$/.test(trimmed)
  const url = /^[A-Za-z0-9_-]+={0,2}$/.test(trimmed)
  if (!standard && !url) {
    throw new Error('the webhook secret key must be base64 or base64url text (e.g. `openssl rand -base64 32`)')
  }
  const key = Buffer.from(trimmed, standard ? 'base64' : 'base64url')
  if (key.length !== KEY_BYTES) {
    throw new Error(`the webhook secret key must decode to ${KEY_BYTES} bytes, not ${key.length}`)
  }
  return key
}
