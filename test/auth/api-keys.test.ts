import t from 'tap'
import { v7 } from 'uuid'
import {
  API_KEY_LENGTH, API_KEY_PREFIX, generateApiKey, hashApiKey, parseApiKey, secretMatches,
} from '../../src/auth/api-keys.ts'

const tenantId = v7()

t.test('a generated key parses back to its key id and tenant', async (t) => {
  const key = generateApiKey(tenantId)
  t.equal(key.key.length, API_KEY_LENGTH)
  t.ok(key.key.startsWith(API_KEY_PREFIX))
  t.ok(key.key.startsWith(key.prefix))
  const parsed = parseApiKey(key.key)
  t.match(parsed, { keyId: key.id, tenantId, prefix: key.prefix })
  t.ok(secretMatches(key.secretHash, parsed!.secretHash))
  t.same(key.secretHash, hashApiKey(key.key))
})

t.test('keys carry 256 bits of fresh randomness', async (t) => {
  const keys = new Set(Array.from({ length: 200 }, () => generateApiKey(tenantId).key.slice(-49, -6)))
  t.equal(keys.size, 200)
})

t.test('anything that is not a well-formed key is refused without a lookup', async (t) => {
  const { key } = generateApiKey(tenantId)
  const flipped = (i: number): string => key.slice(0, i) + (key[i] === 'a' ? 'b' : 'a') + key.slice(i + 1)
  const bads = [
    '', 'rfk_', key.slice(0, -1), `${key}A`, key.replace(API_KEY_PREFIX, 'rfx_'),
    flipped(10), flipped(60), flipped(key.length - 1), `${key.slice(0, -6)}!!!!!!`,
  ]
  for (const bad of bads) {
    t.equal(parseApiKey(bad), undefined, JSON.stringify(bad.slice(0, 20)))
  }
})

t.test('the secret comparison refuses different hashes and lengths', async (t) => {
  const a = hashApiKey('a')
  t.ok(secretMatches(a, hashApiKey('a')))
  t.notOk(secretMatches(a, hashApiKey('b')))
  t.notOk(secretMatches(a, a.subarray(0, 16)))
})
