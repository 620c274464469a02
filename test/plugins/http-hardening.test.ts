import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'

t.test('every response carries security headers, and the API forbids framing and scripts', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  for (const res of [
    await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' })),
    await ctx.app.inject({ method: 'GET', url: '/v1/tenant' }), // a 401
    await ctx.app.inject({ method: 'GET', url: '/healthz' }),
  ]) {
    t.equal(res.headers['x-content-type-options'], 'nosniff')
    t.equal(res.headers['x-frame-options'], 'SAMEORIGIN')
    t.match(res.headers['strict-transport-security'], /max-age=\d+/)
    t.match(res.headers['content-security-policy'], /default-src 'none'/)
    t.match(res.headers['content-security-policy'], /frame-ancestors 'none'/)
    t.notOk(res.headers['x-powered-by'])
  }
  const docs = await ctx.app.inject({ method: 'GET', url: '/docs' })
  t.equal(docs.statusCode, 200, 'the docs page still loads')
  t.match(docs.headers['content-security-policy'], /script-src 'self'/, 'with a policy of its own that lets it run')
})

t.test('CORS is off unless origins are configured, and then only for those origins', async (t) => {
  const preflight = {
    method: 'OPTIONS' as const,
    url: '/v1/customers',
    headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
  }
  const closed = await buildTestApp(t)
  const none = await closed.app.inject(preflight)
  t.notOk(none.headers['access-control-allow-origin'], 'no CORS headers by default')

  const open = await buildTestApp(t, { CORS_ORIGINS: 'https://app.example.com,https://admin.example.com' })
  const allowed = await open.app.inject(preflight)
  t.equal(allowed.statusCode, 204)
  t.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com')
  t.match(allowed.headers['access-control-allow-headers'], /authorization/)
  const other = await open.app.inject({ ...preflight, headers: { ...preflight.headers, origin: 'https://evil.example.net' } })
  t.notOk(other.headers['access-control-allow-origin'], 'another origin is not allowed')
})

t.test('when the event loop lags past MAX_EVENT_LOOP_DELAY_MS, requests are shed with 503 at once, ' +
  'and served again after', async (t) => {
  const ctx = await buildTestApp(t, { MAX_EVENT_LOOP_DELAY_MS: 50 })
  // Right after start-up, whose schema compiling blocked the loop: served, not shed.
  const tenant = await provisionTenant(ctx)
  // The pressure is judged from one sample after the server is ready.
  await sleep(1100)
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  // Block the loop the way a CPU-bound stretch of work would; the sampler, due meanwhile, runs first.
  const until = Date.now() + 1500
  while (Date.now() < until) { /* busy */ }
  await sleep(5)
  const shed = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))
  t.equal(shed.statusCode, 503)
  t.equal(shed.headers['retry-after'], '1')
  t.match(shed.headers['content-type'], /application\/problem\+json/)
  t.match(shed.json(), { status: 503, detail: /overloaded/ })
  t.equal((await ctx.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200, 'liveness is still answered')
  let served = false
  for (let i = 0; i < 50 && !served; i++) {
    await sleep(100)
    served = (await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode === 200
  }
  t.ok(served, 'served again once the pressure is gone')
})

t.test('no security policy upgrades requests to https, so /docs works over plain HTTP by any host name', async (t) => {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const operatorHeaders = { authorization: `Bearer ${ctx.adminToken}` }
  const docs = await ctx.app.inject({ method: 'GET', url: '/docs', headers: { host: 'server:3000' } })
  t.equal(docs.statusCode, 200)
  // Every script, style sheet and icon the page loads, at the paths the page names.
  const assets = [...docs.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!)
  t.ok(assets.some((a) => a.endsWith('.js')) && assets.some((a) => a.endsWith('.css')),
    `the page loads ${assets.join(', ')}`)
  for (const url of ['/docs', ...assets, '/docs/json', '/openapi.json', '/healthz']) {
    const res = await ctx.app.inject({ method: 'GET', url, headers: { host: 'server:3000' } })
    t.equal(res.statusCode, 200, `${url} is served`)
    const policy = String(res.headers['content-security-policy'])
    t.notMatch(policy, /upgrade-insecure-requests/i, `${url}: ${policy}`)
    if (url.startsWith('/docs')) {
      // The page's own scripts and styles, from the same origin, whatever the scheme.
      t.match(policy, /(^|; ?)script-src 'self'[^;]*/, `${url} may run its own scripts`)
      t.match(policy, /(^|; ?)style-src 'self'[^;]*/, `${url} may load its own styles`)
    }
  }
  for (const res of [
    await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' })),
    await ctx.app.inject({ method: 'GET', url: '/v1/tenant' }),
    await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: operatorHeaders }),
  ]) {
    t.match(res.headers['content-security-policy'], /default-src 'none'/)
    t.notMatch(res.headers['content-security-policy'], /upgrade-insecure-requests/i, 'nor does the JSON API\'s')
  }
})
