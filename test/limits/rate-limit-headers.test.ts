import t from 'tap'
import { rateLimitField, rateLimitHeaders, rateLimitPolicyField } from '../../src/limits/rate-limit-headers.ts'
import { addressKey, authFailuresPolicy, RateCounter, tenantPolicies } from '../../src/limits/rate-limit.ts'

t.test('the fields are Structured Field lists of quoted policy names with integer parameters', async (t) => {
  const policies = tenantPolicies({ requests_per_second: 100, burst: 200 })
  t.equal(rateLimitPolicyField(policies), '"burst";q=200;w=1, "sustained";q=6000;w=60')
  t.equal(rateLimitField([
    { policy: policies[0]!, remaining: 199, resetSeconds: 1 },
    { policy: policies[1]!, remaining: 5999, resetSeconds: 60 },
  ]), '"burst";r=199;t=1, "sustained";r=5999;t=60')
  // Integers stay whole, non-negative and within the 15 digits a Structured Field Integer may have.
  t.equal(rateLimitField([{ policy: policies[0]!, remaining: -3, resetSeconds: 0.4 }]), '"burst";r=0;t=0')
  t.equal(rateLimitPolicyField([{ name: 'sustained', quota: 1e20, windowSeconds: 60 }]),
    '"sustained";q=999999999999999;w=60')
  t.throws(() => rateLimitPolicyField([{ name: 'a"b', quota: 1, windowSeconds: 1 }]), TypeError)
})

t.test('an unlimited rate has no policy, and no policy means no header', async (t) => {
  t.same(tenantPolicies({ requests_per_second: null, burst: null }), [])
  t.same(tenantPolicies({ requests_per_second: 2, burst: null }),
    [{ name: 'sustained', quota: 120, windowSeconds: 60 }])
  t.same(rateLimitHeaders([]), {})
  t.same(rateLimitHeaders([{ policy: authFailuresPolicy(30), remaining: 0, resetSeconds: 42 }]), {
    'ratelimit-policy': '"failed_authentications";q=30;w=60',
    ratelimit: '"failed_authentications";r=0;t=42',
  })
})

t.test('client addresses count by IPv4 address and by IPv6 /64', async (t) => {
  t.equal(addressKey('203.0.113.7'), '203.0.113.7')
  t.equal(addressKey('::ffff:203.0.113.7'), '203.0.113.7')
  t.equal(addressKey('2001:db8:1:2::1'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), '2001:db8:1:2::/64')
  t.not(addressKey('2001:db8:1:3::1'), addressKey('2001:db8:1:2::1'))
})

t.test('in memory, a key is refused past its quota and another key is not', async (t) => {
  const counter = new RateCounter({ keyPrefix: 'unit', timeoutMs: 100 })
  const policy = { name: 'sustained', quota: 3, windowSeconds: 60 }
  const outcomes = []
  for (let i = 0; i < 4; i++) outcomes.push(await counter.hit([policy], 'a'))
  t.same(outcomes.map((o) => o.outcome), ['allowed', 'allowed', 'allowed', 'refused'])
  t.same(outcomes.map((o) => o.outcome === 'unknown' ? undefined : o.states[0]!.remaining), [2, 1, 0, 0])
  const refused = outcomes[3]!
  t.ok(refused.outcome === 'refused' && refused.retryAfterSeconds >= 1 && refused.retryAfterSeconds <= 60)
  t.equal((await counter.hit([policy], 'b')).outcome, 'allowed')
  // check() reads without counting: 'c' stays untouched however often it is checked.
  for (let i = 0; i < 5; i++) t.equal((await counter.check(policy, 'c')).outcome, 'allowed')
  t.equal((await counter.check(policy, 'a')).outcome, 'refused')
})
