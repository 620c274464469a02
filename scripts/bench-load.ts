// The HTTP load of `npm run bench`, run as a process of its own (so it does not share the server's
// event loop): autocannon against one scenario, rotating across tenants (or one tenant) and invoices.
// Usage: tsx scripts/bench-load.ts '<json: {url, scenario, connections, seconds, tenants, invoices}>'
import autocannon, { type Request } from 'autocannon'
import { benchKey, customerUuid, FORGED_KEY, hugeBody, invoiceUuid, LINE } from './lib/bench-data.ts'
import type { LoadJob } from './lib/bench-runners.ts'

const job = JSON.parse(process.argv[2]!) as LoadJob
const keys = Array.from({ length: job.tenants }, (_, i) => `Bearer ${benchKey(i + 1).key}`)
const pick = (n: number): number => 1 + Math.floor(Math.random() * n)
const huge = job.scenario === 'forged-key-huge-body' ? hugeBody() : ''
const body = (t: number): string =>
  JSON.stringify({ customer_id: customerUuid(t), currency: 'EUR', lines: [LINE, LINE, LINE] })

function setup (request: Request): Request {
  const t = job.tenant ?? pick(job.tenants)
  const headers = { authorization: keys[t - 1]!, 'content-type': 'application/json' }
  switch (job.scenario) {
    case 'get-invoice':
      return { ...request, method: 'GET', path: `/v1/invoices/${invoiceUuid(t, pick(job.invoices))}`, headers }
    case 'list-invoices': return { ...request, method: 'GET', path: '/v1/invoices?limit=50', headers }
    case 'create-invoice': return { ...request, method: 'POST', path: '/v1/invoices', headers, body: body(t) }
    case 'forged-key-huge-body':
      return {
        ...request,
        method: 'POST',
        path: '/v1/invoices',
        headers: { ...headers, authorization: `Bearer ${FORGED_KEY.key}` },
        body: huge,
      }
    default: return { ...request, method: 'GET', path: '/healthz' }
  }
}

const result = await autocannon({
  url: job.url,
  connections: job.connections,
  duration: job.seconds,
  // Paced: autocannon's coordinated-omission correction would then add made-up samples every ceil(1 / rate
  // per connection) = 1 ms of each response's time (8.0), inflating every percentile: left out.
  ...(job.rate !== undefined && { overallRate: job.rate, ignoreCoordinatedOmission: true }),
  requests: [{ setupRequest: setup }],
})
const statuses: Record<string, number> = {}
// In autocannon's result (8.0), not in its type declarations.
const byStatus = (result as { statusCodeStats?: Record<string, { count: number }> }).statusCodeStats ?? {}
for (const [status, { count }] of Object.entries(byStatus)) statuses[status] = count
process.stdout.write(JSON.stringify({
  requests: result.requests.total,
  rps: result.requests.average,
  p50: result.latency.p50,
  p99: result.latency.p99,
  errors: result.errors + result.timeouts,
  non2xx: result.non2xx,
  statuses,
}) + '\n')
