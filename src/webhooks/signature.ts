import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com/): HMAC-SHA256, keyed by the decoded
 * secret, over `${msgId}.${timestamp}.${body}`, sent as `v1,<base64>` in `webhook-signature`.
 */
const SECRET_PREFIX = 'whsec_'
const VERSION = 'v1'
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/
const DIGITS = /^\d{1,15}$/

/** Headers as a receiver sees them: any case, as Node's IncomingHttpHeaders or a plain record. */
export type WebhookHeaderSource = Record<string, string | string[] | undefined>

export interface VerifyOptions {
  /** How far `webhook-timestamp` may be from now, either way; 5 minutes as the specification suggests. */
  toleranceSeconds?: number
  /** Now, in seconds since the epoch (tests); the clock otherwise. */
  now?: number
}

/** A new secret: 32 random bytes, the top of the 24-64 byte range the specification asks for. */
export function generateSigningSecret (): string {
  return `${SECRET_PREFIX}${randomBytes(32).toString('base64')}`
}

// The reference libraries accept the secret with or without its prefix, padded or not; so do we.
// Buffer's decoder skips characters it does not know, so the alphabet is checked first: a typo
// would otherwise yield a different key without a word.
function secretKey (secret: string): Buffer {
  const encoded = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret
  if (!BASE64.test(encoded)) throw new Error('a webhook signing secret is whsec_ followed by base64')
  return Buffer.from(encoded, 'base64')
}

function hmac (key: Buffer, msgId: string, timestampSeconds: number, body: string): Buffer {
  // The specification warns that an id or timestamp holding a '.' would let the signed parts shift.
  if (msgId === '' || msgId.includes('.')) throw new Error('a webhook message id is non-empty and has no "."')
  if (!Number.isSafeInteger(timestampSeconds) || timestampSeconds < 0) {
    throw new Error('a webhook timestamp is a whole number of seconds since the epoch')
  }
  return createHmac('sha256', key).update(`${msgId}.${timestampSeconds}.${body}`).digest()
}

/** The `v1,<base64>` signature of one message with one secret. */
export function signPayload (secret: string, msgId: string, timestampSeconds: number, body: string): string {
  return `${VERSION},${hmac(secretKey(secret), msgId, timestampSeconds, body).toString('base64')}`
}

/**
 * The headers of one delivery attempt. Every secret signs: while a secret is rotated the old and the
 * new one both do, so a receiver holding either verifies.
 */
export function webhookHeaders (
  secrets: string[], msgId: string, timestampSeconds: number, body: string
): Record<string, string> {
  if (secrets.length === 0) throw new Error('a webhook needs at least one signing secret')
  return {
    'content-type': 'application/json',
    'webhook-id': msgId,
    'webhook-timestamp': String(timestampSeconds),
    'webhook-signature': secrets.map((secret) => signPayload(secret, msgId, timestampSeconds, body)).join(' '),
  }
}

function header (headers: WebhookHeaderSource, name: string): string | undefined {
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name) return Array.isArray(value) ? value[0] : value
  }
  return undefined
}

/**
 * Whether a received webhook was signed with `secret`: any one `v1` signature in the header must match,
 * and the timestamp must be within tolerance (a replayed message is refused). Never throws on what the
 * sender controls; a malformed secret is the caller's mistake and throws.
 */
export function verifyWebhook (
  secret: string, headers: WebhookHeaderSource, body: string, options: VerifyOptions = {}
): boolean {
  const key = secretKey(secret)
  const msgId = header(headers, 'webhook-id')
  const timestamp = header(headers, 'webhook-timestamp')
  const signatures = header(headers, 'webhook-signature')
  if (msgId === undefined || timestamp === undefined || signatures === undefined) return false
  if (msgId === '' || msgId.includes('.') || !DIGITS.test(timestamp)) return false
  const seconds = Number(timestamp)
  const now = options.now ?? Math.floor(Date.now() / 1000)
  if (Math.abs(now - seconds) > (options.toleranceSeconds ?? 300)) return false
  const expected = hmac(key, msgId, seconds, body)
  let matched = false
  for (const entry of signatures.split(' ')) {
    const [version, encoded] = entry.split(',', 2)
    if (version !== VERSION || encoded === undefined || !BASE64.test(encoded)) continue
    const given = Buffer.from(encoded, 'base64')
    // Every entry is compared (no early return), so timing says nothing of which one matched.
    if (given.length === expected.length && timingSafeEqual(given, expected)) matched = true
  }
  return matched
}
