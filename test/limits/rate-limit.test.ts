import { randomBytes, randomUUID } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { formatApiKey } from '../../src/auth/api-keys.ts'
import { newId } from '../../src/ids.ts'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant, type TestApp } from '../helpers/app.ts'
import { findRedisServer, redisAnswers, redisMissing, SHARED_REDIS_URL, startRedisServer } from '../helpers/redis.ts'

// Rate limits per tenant and failed authentications per client address (docs/limits.md). Test apps turn
// both off by default: each test sets the limits it needs. The windows are fixed windows from a key's
// first request: the sustained one (60 s) holds exact counts whatever the machine's speed; the burst one
// (1 s) is only ever asserted to refuse, never to refuse at an exact request.

const PROBLEMS = 'https://rowfence.dev/problems/'
const TENANT = { method: 'GET', url: '/v1/tenant' } as const

/** Keeps the Redis keys of this file's apps apart from any other test's. */
const keys = (): { rateLimitKeyPrefix: string } => ({ rateLimitKeyPrefix: `rowfence-test:${randomUUID()}` })

/** A key with a valid checksum naming the tenant (and, by default, its real key id), with a wrong secret. */
const madeUpKey = (tenant: ProvisionedTenant, keyId = tenant.keyId): { key: string } =>
  ({ key: formatApiKey(keyId, tenant.id, randomBytes(32)).key })

/** The `r` of one policy in a RateLimit field. */
function remaining (res: LightMyRequestResponse, policy: string): number | undefined {
  const field = res.headers.ratelimit
  const match = typeof field === 'string' ? new RegExp(`"${policy}";r=(\\d+);t=(\\d+)`).exec(field) : null
  return match === null ? undefined : Number(match[1])
}

function assertProblem (t: Test, res: LightMyRequestResponse, status: number, slug: string): void {
  t.equal(res.statusCode, status)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(res.json(), { type: PROBLEMS + slug, status })
  t.match(String(res.headers['retry-after']), /^[1-9]\d*$/, 'retry-after: whole seconds, at least 1')
  t.notMatch(res.body, /Error:|\n\s+at |node_modules/, 'no stack trace')
}

async function metric (ctx: TestApp, name: string): Promise<number> {
  const authorization = `Bearer ${ctx.adminToken}`
  const res = await ctx.app.inject({ method: 'GET', url: '/metrics', headers: { authorization } })
  const match = new RegExp(`^${name.replaceAll(/[{}"]/g, (c) => `\\${c}`)} (\\d+)`, 'm').exec(res.body)
  if (match === null) throw new Error(`metric ${name} not found`)
  return Number(match[1])
}

t.test('a tenant over its burst gets 429 with Retry-After and RateLimit fields; another one does not', async (t) => {
  const ctx = await buildTestApp(t, { LIMIT_BURST: 5, LIMIT_REQUESTS_PER_SECOND: 100 })
  const [a, b] = [await provisionTenant(ctx), await provisionTenant(ctx)]
  const policy = '"burst";q=5;w=1, "sustained";q=6000;w=60'

  const allowed: LightMyRequestResponse[] = []
  let refused: LightMyRequestResponse | undefined
  // At most 5 requests count in any one second: one after another, a 6th arrives within the second.
  for (let i = 0; i < 100 && refused === undefined; i++) {
    const res = await ctx.app.inject(as(a, TENANT))
    if (res.statusCode === 200) allowed.push(res)
    else refused = res
  }
  if (refused === undefined) throw new Error('no request was refused')
  t.ok(allowed.length >= 5, 'the burst is served before any refusal')
  for (const res of allowed) t.equal(res.headers['ratelimit-policy'], policy)
  t.same(allowed.map((res) => remaining(res, 'sustained')), allowed.map((_, i) => 5999 - i),
    'each allowed response shows one request less left in the minute')

  assertProblem(t, refused, 429, 'rate-limited')
  t.equal(refused.headers['ratelimit-policy'], policy)
  t.equal(remaining(refused, 'burst'), 0)
  t.ok(Number(refused.headers['retry-after']) >= 1 && Number(refused.headers['retry-after']) <= 60)
  t.ok(await metric(ctx, 'rowfence_limit_refusals_total{reason="rate"}') >= 1, 'the refusal is counted')

  const other = await ctx.app.inject(as(b, TENANT))
  t.equal(other.statusCode, 200, 'another tenant on the same instance is served')
  t.equal(remaining(other, 'burst'), 4)
  t.equal(remaining(other, 'sustained'), 5999)
})

t.test('a refusal for the rate is held before it is sent, holding no connection meanwhile', async (t) => {
  const ctx = await buildTestApp(t, { LIMIT_BURST: 1, LIMIT_REQUESTS_PER_SECOND: 100, LIMIT_REFUSAL_DELAY_MS: 400 })
  const tenant = await provisionTenant(ctx)
  let refused: LightMyRequestResponse | undefined
  let held = 0
  for (let i = 0; i < 20 && refused === undefined; i++) {
    const started = Date.now()
    const pending = ctx.app.inject(as(tenant, TENANT))
    // While a refusal waits, every connection of the pool is free: it waits outside the transaction.
    await new Promise((resolve) => setTimeout(resolve, 100))
    const busy = ctx.app.dbPool.totalCount - ctx.app.dbPool.idleCount
    const res = await pending
    if (res.statusCode === 429) {
      refused = res
      held = Date.now() - started
      t.equal(busy, 0, 'no connection held while the refusal waited')
    }
  }
  if (refused === undefined) throw new Error('no request was refused')
  // A lower bound: the refusal was not sent before its delay (nor past its window: never more than a second).
  t.ok(held >= 390, `the 429 came after its delay (${held} ms)`)
  assertProblem(t, refused, 429, 'rate-limited')
})

t.test('made-up keys naming a tenant do not spend its budget', async (t) => {
  const ctx = await buildTestApp(t, { LIMIT_REQUESTS_PER_SECOND: 1, LIMIT_BURST: 'unlimited' })
  const victim = await provisionTenant(ctx)
  for (let i = 0; i < 70; i++) {
    const forged = i % 2 === 0 ? madeUpKey(victim) : madeUpKey(victim, newId())
    const res = await ctx.app.inject(as(forged, i % 3 === 0
      ? { method: 'POST', url: '/v1/customers', payload: { name: 'x' } }
      : TENANT))
    t.equal(res.statusCode, 401, `made-up key ${i} is refused`)
    t.equal(res.headers.ratelimit, undefined, 'a refused credential gets no rate information')
  }
  const res = await ctx.app.inject(as(victim, TENANT))
  t.equal(res.statusCode, 200)
  t.equal(res.headers['ratelimit-policy'], '"sustained";q=60;w=60', 'an unlimited burst is left out')
  t.equal(remaining(res, 'sustained'), 59, 'the tenant\'s own request is the first one counted')
})

t.test('an address that failed to authenticate too often gets 429; requests that authenticate do not count',
  async (t) => {
    const ctx = await buildTestApp(t, { AUTH_FAILURES_PER_MINUTE: 3 })
    const tenant = await provisionTenant(ctx)
    const guesser = { remoteAddress: '203.0.113.7' }
    const neighbour = { remoteAddress: '198.51.100.9' }
    const admin = { authorization: `Bearer ${ctx.adminToken}` }

    for (let i = 0; i < 10; i++) {
      t.equal((await ctx.app.inject(as(tenant, { ...TENANT, ...guesser }))).statusCode, 200, 'valid requests')
    }
    // Three refused credentials, on both kinds of route: a made-up key, a wrong operator token, a bad checksum.
    const failures = [
      as(madeUpKey(tenant), { ...TENANT, ...guesser }),
      { method: 'GET' as const, url: '/admin/v1/tenants', headers: { authorization: 'Bearer wrong' }, ...guesser },
      as({ key: `${tenant.key.slice(0, -1)}${tenant.key.endsWith('A') ? 'B' : 'A'}` }, { ...TENANT, ...guesser }),
    ]
    for (const request of failures) t.equal((await ctx.app.inject(request)).statusCode, 401)

    // A key this instance has not confirmed (a second key of the tenant, never used here) is refused at once.
    const issued = await ctx.app.inject({
      method: 'POST', url: `/admin/v1/tenants/${tenant.id}/api-keys`, headers: admin, payload: { name: 'fresh' },
    })
    t.equal(issued.statusCode, 201)
    const fresh = { key: issued.json().key as string }
    const blocked = await ctx.app.inject(as(fresh, { ...TENANT, ...guesser }))
    assertProblem(t, blocked, 429, 'too-many-failed-authentications')
    t.equal(blocked.headers['ratelimit-policy'], '"failed_authentications";q=3;w=60')
    t.equal(remaining(blocked, 'failed_authentications'), 0)
    // Refused before the credential or the body is looked at: a body that is not JSON is not a 400.
    const unread = await ctx.app.inject(as(fresh, {
      method: 'POST',
      url: '/v1/customers',
      payload: '{not json',
      headers: { 'content-type': 'application/json' },
      ...guesser,
    }))
    t.equal(unread.statusCode, 429)
    const operator = await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: admin, ...guesser })
    assertProblem(t, operator, 429, 'too-many-failed-authentications')
    // The key this instance confirmed before is still served: whoever holds it is not guessing.
    t.equal((await ctx.app.inject(as(tenant, { ...TENANT, ...guesser }))).statusCode, 200,
      'a credential confirmed here goes on')
    t.ok(await metric(ctx, 'rowfence_limit_refusals_total{reason="auth_failures"}') >= 3)

    // Another address is not affected, and its own two failures leave it below the limit.
    for (let i = 0; i < 2; i++) {
      t.equal((await ctx.app.inject(as(madeUpKey(tenant), { ...TENANT, ...neighbour }))).statusCode, 401)
    }
    t.equal((await ctx.app.inject(as(tenant, { ...TENANT, ...neighbour }))).statusCode, 200)
    const served = await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: admin, ...neighbour })
    t.equal(served.statusCode, 200)
  })

/** Two instances on one database; `overrides` for both. */
async function twoInstances (t: Test, overrides: Parameters<typeof buildTestApp>[1]): Promise<[TestApp, TestApp]> {
  const options = keys()
  const first = await buildTestApp(t, overrides, undefined, options)
  const second = await buildTestApp(t, overrides, first.db, options)
  return [first, second]
}

/** 35 requests of the tenant on each instance, the first's then the second's: their statuses. */
async function spread (first: TestApp, second: TestApp, tenant: ProvisionedTenant): Promise<LightMyRequestResponse[]> {
  const responses = []
  for (const ctx of [first, second]) {
    for (let i = 0; i < 35; i++) responses.push(await ctx.app.inject(as(tenant, TENANT)))
  }
  return responses
}

const shared = redisMissing(await redisAnswers(SHARED_REDIS_URL)
  ? undefined
  : `nothing answers at ${SHARED_REDIS_URL} (start redis-server, or set TEST_REDIS_URL)`)

t.test('with REDIS_URL, a tenant\'s limit holds across instances', { skip: shared ?? false }, async (t) => {
  const [first, second] = await twoInstances(t,
    { REDIS_URL: SHARED_REDIS_URL, LIMIT_REQUESTS_PER_SECOND: 1, LIMIT_BURST: 'unlimited' })
  const tenant = await provisionTenant(first)
  const responses = await spread(first, second, tenant)
  t.equal(responses.filter((res) => res.statusCode === 429).length, 10, '70 requests for a quota of 60: 10 refused')
  t.equal(responses.filter((res) => res.statusCode === 200).length, 60)
  t.equal(remaining(responses[35]!, 'sustained'), 24, 'the second instance sees the first\'s 35 requests')
})

t.test('without REDIS_URL, each instance counts its own requests', async (t) => {
  const [first, second] = await twoInstances(t, { LIMIT_REQUESTS_PER_SECOND: 1, LIMIT_BURST: 'unlimited' })
  const tenant = await provisionTenant(first)
  const responses = await spread(first, second, tenant)
  t.same(responses.filter((res) => res.statusCode !== 200).map((res) => res.statusCode), [])
  t.equal(remaining(responses[35]!, 'sustained'), 59)
})

const binary = findRedisServer()
const ownServer = redisMissing(binary === undefined ? 'redis-server is not installed' : undefined)

t.test('when Redis stops, requests go on uncounted, or get 503 failing closed', { skip: ownServer ?? false },
  async (t) => {
    const server = await startRedisServer(t, binary!)
    const limits = {
      REDIS_URL: server.url,
      REDIS_TIMEOUT_MS: 200,
      LIMIT_REQUESTS_PER_SECOND: 100,
      LIMIT_BURST: 'unlimited',
      AUTH_FAILURES_PER_MINUTE: 30,
    } as const
    const open = await buildTestApp(t, limits, undefined, keys())
    const closed = await buildTestApp(t, { ...limits, RATE_LIMIT_FAIL_CLOSED: true }, open.db, keys())
    const tenant = await provisionTenant(open)
    for (const ctx of [open, closed]) {
      const res = await ctx.app.inject(as(tenant, TENANT))
      t.equal(res.statusCode, 200)
      t.ok(remaining(res, 'sustained') !== undefined, 'counted in Redis while it runs')
    }
    const errorsBefore = await metric(open, 'rowfence_rate_limit_store_errors_total')

    await server.kill()
    for (let i = 0; i < 5; i++) {
      const res = await open.app.inject(as(tenant, i % 2 === 0
        ? TENANT
        : { method: 'POST', url: '/v1/customers', payload: { name: `c${i}` } }))
      t.ok(res.statusCode === 200 || res.statusCode === 201, `fail open: request ${i} is served (${res.statusCode})`)
      t.equal(res.headers.ratelimit, undefined, 'nothing counted, nothing claimed')
    }
    const operator = await open.app.inject({
      method: 'GET', url: '/admin/v1/tenants', headers: { authorization: `Bearer ${open.adminToken}` },
    })
    t.equal(operator.statusCode, 200, 'fail open: operator routes are served')
    t.ok(await metric(open, 'rowfence_rate_limit_store_errors_total') >= errorsBefore + 5,
      'each decision Redis could not make is counted')

    for (let i = 0; i < 3; i++) {
      assertProblem(t, await closed.app.inject(as(tenant, TENANT)), 503, 'unavailable')
    }
    assertProblem(t, await closed.app.inject({
      method: 'GET', url: '/admin/v1/tenants', headers: { authorization: `Bearer ${closed.adminToken}` },
    }), 503, 'unavailable')
  })

t.test('a Redis that does not answer at start-up does not stop the server', async (t) => {
  const { freePort } = await import('../helpers/net.ts')
  const ctx = await buildTestApp(t, {
    REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_TIMEOUT_MS: 100, LIMIT_REQUESTS_PER_SECOND: 1,
  }, undefined, keys())
  const tenant = await provisionTenant(ctx)
  const res = await ctx.app.inject(as(tenant, TENANT))
  t.equal(res.statusCode, 200, 'served uncounted')
  t.equal(res.headers.ratelimit, undefined)
})
