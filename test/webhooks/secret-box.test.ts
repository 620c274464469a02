import { randomBytes } from 'node:crypto'
import t from 'tap'
import { openSecret, parseServerKey, sealSecret } from '../../src/webhooks/secret-box.ts'

const key = randomBytes(32)
const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
const context = 'tenant-1:endpoint-1'
const CANNOT_OPEN = /did not open: wrong server key, wrong context, or an altered value/

t.test('a sealed secret opens with the same key and context', async (t) => {
  const sealed = sealSecret(key, secret, context)
  t.match(sealed, /^v1\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/)
  t.notMatch(sealed, /MfKQ9r8/)
  t.equal(openSecret(key, sealed, context), secret)
  t.not(sealSecret(key, secret, context), sealed, 'a fresh IV each time')
  t.equal(openSecret(key, sealSecret(key, 'ünïcode ✓'), undefined), 'ünïcode ✓', 'no context')
})

t.test('a wrong key does not open it', async (t) => {
  const sealed = sealSecret(key, secret, context)
  t.throws(() => openSecret(randomBytes(32), sealed, context), CANNOT_OPEN)
  t.throws(() => openSecret(randomBytes(16), sealed, context), /32 bytes, not 16/)
  t.throws(() => sealSecret(randomBytes(31), secret), /32 bytes, not 31/)
})

t.test('a secret copied to another row (another context) does not open', async (t) => {
  const sealed = sealSecret(key, secret, context)
  t.throws(() => openSecret(key, sealed, 'tenant-1:endpoint-2'), CANNOT_OPEN)
  t.throws(() => openSecret(key, sealed, 'tenant-2:endpoint-1'), CANNOT_OPEN)
  t.throws(() => openSecret(key, sealed), CANNOT_OPEN, 'nor without one')
  t.throws(() => openSecret(key, sealSecret(key, secret), context), CANNOT_OPEN, 'nor sealed without one')
})

t.test('any altered part does not open', async (t) => {
  const sealed = sealSecret(key, secret, context)
  const parts = sealed.split('.')
  for (const index of [1, 2, 3]) {
    const bytes = Buffer.from(parts[index] ?? '', 'base64url')
    bytes[0] = (bytes[0] ?? 0) ^ 1
    const altered = parts.map((part, i) => (i === index ? bytes.toString('base64url') : part)).join('.')
    t.throws(() => openSecret(key, altered, context), CANNOT_OPEN, `part ${index}`)
  }
  const shortTag = [...parts.slice(0, 3), Buffer.from(parts[3] ?? '', 'base64url').subarray(0, 12)
    .toString('base64url')].join('.')
  t.throws(() => openSecret(key, shortTag, context), CANNOT_OPEN, 'a truncated tag')
  const malformed = ['', 'v1', `v2.${parts.slice(1).join('.')}`, `${sealed}.x`, sealed.replace(/\.[^.]+$/, '.+/')]
  for (const value of malformed) {
    t.throws(() => openSecret(key, value, context), /is v1\.<iv>\.<ciphertext>\.<tag>/, value)
  }
})

t.test('the server key is base64 or base64url of exactly 32 bytes', async (t) => {
  const raw = randomBytes(32)
  raw[0] = 0xfb // so that the two alphabets differ in the first character
  t.same(parseServerKey(raw.toString('base64')), raw)
  t.same(parseServerKey(raw.toString('base64url')), raw)
  t.same(parseServerKey(`${raw.toString('base64')}\n`), raw, 'a trailing newline from a file')
  t.throws(() => parseServerKey(randomBytes(16).toString('base64')), /decode to 32 bytes, not 16/)
  t.throws(() => parseServerKey(randomBytes(33).toString('base64')), /decode to 32 bytes, not 33/)
  t.throws(() => parseServerKey(''), /base64 or base64url/)
  t.throws(() => parseServerKey(`${raw.toString('hex')}!`), /base64 or base64url/)
  t.throws(() => parseServerKey(raw.toString('base64').replace(/^./, '+').replace(/.$/, '_')), /base64 or base64url/)
})
