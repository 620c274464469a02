import { randomUUID } from 'node:crypto'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { loadConfig } from '../../src/config.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

const lines: Array<Record<string, unknown>> = []
const stream = new PassThrough()
stream.on('data', (chunk: Buffer) => {
  for (const line of chunk.toString().split('\n')) {
    if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  }
})
const ctx = await buildTestApp(t, { LOG_LEVEL: 'info' }, undefined, { logStream: stream })
const acme = await provisionTenant(ctx)

t.test('every log line of a tenant request carries its request id, and the tenant once it is known', async (t) => {
  const requestId = `obs-${randomUUID()}`
  const created = await ctx.app.inject(as(acme, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'Logged' },
    headers: { 'x-request-id': requestId },
  }))
  t.equal(created.statusCode, 201)
  const mine = lines.filter((l) => l.reqId === requestId)
  t.ok(mine.length >= 2, `${mine.length} lines for the request`)
  const completed = mine.find((l) => l.msg === 'request completed')
  t.match(completed, { tenantId: acme.id, res: { statusCode: 201 } }, 'the closing line names the tenant')
  for (const line of mine.filter((l) => l.msg !== 'incoming request')) {
    t.equal(line.tenantId ?? line.tenant, acme.id, `"${String(line.msg)}" names the tenant`)
  }
  t.notOk(mine.some((l) => /disconnected/.test(String(l.msg))), 'a completed request is not reported as abandoned')
})

t.test('no log line ever holds a secret: API keys, user tokens, the operator token', async (t) => {
  const token = signUserToken({ sub: 'observer', tid: acme.id, exp: inAnHour() })
  await ctx.app.inject(as(acme, { method: 'GET', url: '/v1/tenant' }))
  await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: { authorization: `Bearer ${token}` } })
  await ctx.app.inject({
    method: 'GET',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
  })
  await ctx.app.inject({
    method: 'GET',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}x` },
  })
  const created = await ctx.app.inject(as(acme, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'logged?', scopes: ['read'] },
  }))
  const newKey = created.json<{ key: string }>().key
  await ctx.app.inject({ method: 'GET', url: '/v1/tenant', headers: { authorization: `Bearer ${newKey}` } })
  const all = JSON.stringify(lines)
  const redacted = (l: Record<string, unknown>): boolean =>
    (l.req as { headers?: { authorization?: string } } | undefined)?.headers?.authorization === '[redacted]'
  t.ok(lines.some(redacted) || !all.includes('"authorization"'), 'authorization headers are redacted')
  const secrets = [
    ['API key', acme.key.slice(30)],
    ['new API key', newKey.slice(30)],
    ['user token', token.split('.')[2]!],
    ['operator token', ctx.adminToken],
  ] as const
  for (const [what, secret] of secrets) {
    t.notOk(all.includes(secret), `no ${what} in the logs`)
  }
})

t.test('/metrics counts requests by route pattern and status, with bounded labels', async (t) => {
  for (let i = 0; i < 20; i++) {
    // 404s, each a different URL
    await ctx.app.inject(as(acme, { method: 'GET', url: `/v1/customers/${randomUUID()}` }))
    await ctx.app.inject({ method: 'GET', url: `/no/such/route/${randomUUID()}` })
  }
  await ctx.app.inject({ method: 'GET', url: '/v1/tenant' }) // a 401
  const authorization = `Bearer ${ctx.adminToken}`
  const metrics = await ctx.app.inject({ method: 'GET', url: '/metrics', headers: { authorization } })
  const text = metrics.body
  t.match(text, /rowfence_http_requests_total\{route="\/v1\/customers\/:id",method="GET",status="404"\} 20/)
  t.match(text, /rowfence_http_requests_total\{route="unmatched",method="GET",status="404"\} 20/)
  t.match(text, new RegExp('rowfence_http_request_duration_seconds_bucket' +
    '\\{le="[\\d.]+",route="/v1/customers/:id",method="GET",status="404"\\}'))
  t.match(text, /rowfence_http_errors_total\{type="not-found"\} 40/)
  t.match(text, /rowfence_http_errors_total\{type="unauthorized"\} [1-9]/)
  t.match(text, /rowfence_db_pool_connections\{state="in_use"\} \d+/)
  t.match(text, /rowfence_db_pool_connections\{state="waiting"\} \d+/)
  t.notMatch(text, /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-/, 'no id ever becomes a label')
  const series = text.split('\n').filter((l) => l.startsWith('rowfence_http_requests_total{'))
  t.ok(series.length < 15, `${series.length} request series after 40 distinct URLs`)
})

t.test('/metrics answers only the metrics token: 401 problem+json without it or with another', async (t) => {
  const metricsToken = 'metrics-only-token-0123456789abcdefghij'
  const own = await buildTestApp(t, { METRICS_TOKEN: metricsToken })
  const scrape = async (c: typeof ctx, authorization?: string) =>
    c.app.inject({ method: 'GET', url: '/metrics', headers: authorization === undefined ? {} : { authorization } })
  for (const [what, authorization] of [
    ['no token', undefined],
    ['a wrong token', `Bearer ${metricsToken}x`],
    ['the operator token once METRICS_TOKEN is set', `Bearer ${own.adminToken}`],
    ['another scheme', `Basic ${Buffer.from(`x:${metricsToken}`).toString('base64')}`],
  ] as const) {
    const res = await scrape(own, authorization)
    t.equal(res.statusCode, 401, what)
    t.match(res.headers['content-type'], /application\/problem\+json/, what)
    t.match(res.headers['www-authenticate'], /^Bearer /, what)
    t.notMatch(res.body, /rowfence_http_requests_total/, `${what}: no metrics`)
  }
  const ok = await scrape(own, `Bearer ${metricsToken}`)
  t.equal(ok.statusCode, 200)
  t.match(ok.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.match(ok.body, /^# HELP rowfence_/m)

  t.throws(() => loadConfig({ METRICS_TOKEN: 'short-metrics-secret' }), {
    name: 'ConfigError',
    message: 'invalid environment variable METRICS_TOKEN: expected a secret of at least 32 characters',
  }, 'a short METRICS_TOKEN is refused, and not echoed')

  // Without METRICS_TOKEN, the operator's token is the metrics token.
  t.equal((await scrape(ctx)).statusCode, 401)
  t.equal((await scrape(ctx, `Bearer ${ctx.adminToken}`)).statusCode, 200)
})
