import t from 'tap'
import {
  generateSigningSecret, signPayload, verifyWebhook, webhookHeaders,
} from '../../src/webhooks/signature.ts'

// The values of the specification's own "sign function works" test, the same in its JavaScript, Python,
// Go and Ruby libraries (github.com/standard-webhooks/standard-webhooks, libraries/*/...).
const VECTOR = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  msgId: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
}
// The libraries' "invalid signature" case: the published signature with its last character changed.
const WRONG_SIGNATURE = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA='
const now = VECTOR.timestamp + 10
const headersOf = (signature: string, msgId = VECTOR.msgId, timestamp = VECTOR.timestamp) => ({
  'webhook-id': msgId, 'webhook-timestamp': String(timestamp), 'webhook-signature': signature,
})

t.test('the published test vector signs and verifies', async (t) => {
  t.equal(signPayload(VECTOR.secret, VECTOR.msgId, VECTOR.timestamp, VECTOR.body), VECTOR.signature)
  // The reference libraries also take the secret without its prefix.
  t.equal(signPayload(VECTOR.secret.slice('whsec_'.length), VECTOR.msgId, VECTOR.timestamp, VECTOR.body),
    VECTOR.signature)
  t.ok(verifyWebhook(VECTOR.secret, headersOf(VECTOR.signature), VECTOR.body, { now }))
  t.notOk(verifyWebhook(VECTOR.secret, headersOf(WRONG_SIGNATURE), VECTOR.body, { now }))
})

t.test('headers carry one signature per secret, and either secret verifies during a rotation', async (t) => {
  const next = generateSigningSecret()
  const headers = webhookHeaders([VECTOR.secret, next], VECTOR.msgId, VECTOR.timestamp, VECTOR.body)
  t.same(Object.keys(headers).sort(), ['content-type', 'webhook-id', 'webhook-signature', 'webhook-timestamp'])
  t.equal(headers['content-type'], 'application/json')
  t.equal(headers['webhook-timestamp'], '1614265330')
  const signatures = headers['webhook-signature']?.split(' ') ?? []
  t.equal(signatures.length, 2)
  t.equal(signatures[0], VECTOR.signature)
  t.ok(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now }))
  t.ok(verifyWebhook(next, headers, VECTOR.body, { now }))
  t.notOk(verifyWebhook(generateSigningSecret(), headers, VECTOR.body, { now }), 'a third secret does not')
  t.throws(() => webhookHeaders([], VECTOR.msgId, VECTOR.timestamp, VECTOR.body))
})

t.test('a generated secret is whsec_ and 32 random bytes', async (t) => {
  const secret = generateSigningSecret()
  t.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/)
  t.equal(Buffer.from(secret.slice(6), 'base64').length, 32)
  t.not(secret, generateSigningSecret())
})

t.test('a tampered body, timestamp or id does not verify', async (t) => {
  const headers = headersOf(VECTOR.signature)
  t.notOk(verifyWebhook(VECTOR.secret, headers, '{"test": 2432232315}', { now }))
  t.notOk(verifyWebhook(VECTOR.secret, headersOf(VECTOR.signature, VECTOR.msgId, VECTOR.timestamp + 1),
    VECTOR.body, { now }))
  t.notOk(verifyWebhook(VECTOR.secret, headersOf(VECTOR.signature, 'msg_other'), VECTOR.body, { now }))
})

t.test('a timestamp outside the tolerance does not verify, either way', async (t) => {
  const headers = headersOf(VECTOR.signature)
  t.ok(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now: VECTOR.timestamp + 300 }))
  t.notOk(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now: VECTOR.timestamp + 301 }), 'too old')
  t.notOk(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now: VECTOR.timestamp - 301 }), 'too new')
  t.ok(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now: VECTOR.timestamp + 3000, toleranceSeconds: 3600 }))
  t.notOk(verifyWebhook(VECTOR.secret, headers, VECTOR.body), 'the clock is years past the vector')
})

t.test('missing or malformed headers do not verify', async (t) => {
  const full = headersOf(VECTOR.signature)
  for (const name of Object.keys(full)) {
    const partial: Record<string, string> = { ...full }
    delete partial[name]
    t.notOk(verifyWebhook(VECTOR.secret, partial, VECTOR.body, { now }), `without ${name}`)
  }
  const odd = [
    headersOf(VECTOR.signature, VECTOR.msgId, Number.NaN),
    { ...full, 'webhook-timestamp': '1614265330.0' },
    { ...full, 'webhook-signature': 'v1,' },
    { ...full, 'webhook-signature': VECTOR.signature.replace('v1', 'v1a') },
    { ...full, 'webhook-signature': `${VECTOR.signature}AAAA` },
  ]
  for (const headers of odd) t.notOk(verifyWebhook(VECTOR.secret, headers, VECTOR.body, { now }))
  const upper = {
    'Webhook-Id': VECTOR.msgId, 'WEBHOOK-TIMESTAMP': ['1614265330'], 'webhook-signature': `v1a,xyz ${VECTOR.signature}`,
  }
  t.ok(verifyWebhook(VECTOR.secret, upper, VECTOR.body, { now }), 'any case, arrays, unknown versions skipped')
})

t.test('a secret that is not base64, or an id holding a dot, is refused when signing', async (t) => {
  t.throws(() => signPayload('whsec_not base64!', VECTOR.msgId, VECTOR.timestamp, VECTOR.body))
  t.throws(() => signPayload('whsec_', VECTOR.msgId, VECTOR.timestamp, VECTOR.body))
  t.throws(() => signPayload(VECTOR.secret, 'msg.1', VECTOR.timestamp, VECTOR.body))
  t.throws(() => signPayload(VECTOR.secret, VECTOR.msgId, 1.5, VECTOR.body))
})
