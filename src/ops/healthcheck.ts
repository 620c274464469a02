// The image's HEALTHCHECK and the compose health check: `node dist/ops/healthcheck.js` exits 0 when
// /readyz answers 200. node:*-slim has no curl; a file (not `node -e`) is compiled and tested with the rest.
// Readiness rather than liveness: "healthy" then means the API can serve, which is what dependants wait for.
const host = process.env.HOST ?? '127.0.0.1'
// A wildcard listen address is reached on loopback; an IPv6 literal needs brackets in a URL.
const target = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host
const url = `http://${target}:${process.env.PORT ?? '3000'}/readyz`

let healthy = false
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
  await res.arrayBuffer()
  healthy = res.ok
  if (!healthy) process.stderr.write(`healthcheck: ${url} answered ${res.status}\n`)
} catch (error) {
  process.stderr.write(`healthcheck: ${url}: ${error instanceof Error ? error.message : String(error)}\n`)
}
// Exit now: a kept-alive connection must not hold the check open until Docker's timeout.
process.exit(healthy ? 0 : 1)
