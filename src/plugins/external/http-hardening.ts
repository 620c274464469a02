import cors from '@fastify/cors'
import underPressure from '@fastify/under-pressure'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'
import { unavailable } from '../../errors.ts'

export interface HttpHardeningOptions {
  /** Origins allowed to call the API from a browser; empty: no CORS headers at all. */
  corsOrigins: string[]
  /** Event-loop delay (ms) past which requests are shed with 503; 0 turns it off. */
  maxEventLoopDelayMs: number
}

/**
 * The headers helmet sets, computed once: with no per-request input (no CSP nonces) they are the same
 * for every response, so running helmet's middleware on each request would redo the same work
 * (it showed in the request path's CPU profile).
 */
function securityHeaders (options: HelmetOptions): Record<string, string> {
  const headers: Record<string, string> = {}
  const response = {
    setHeader: (name: string, value: string) => { headers[name.toLowerCase()] = value },
    removeHeader: () => {},
    getHeader: () => undefined,
  }
  let failure: unknown
  helmet(options)({} as never, response as never, (error?: unknown) => { failure = error })
  if (failure !== undefined) throw failure instanceof Error ? failure : new Error(String(failure))
  return headers
}

/** How often the event-loop delay is sampled (under-pressure's default). */
const SAMPLE_INTERVAL_MS = 1000

/** Liveness and metrics answer even under pressure: an overloaded process is still alive. */
const ALWAYS_SERVED = new Set(['/healthz', '/metrics'])

/**
 * Security headers (helmet's, computed once), CORS (off unless origins are configured) and load shedding
 * (under-pressure): past the event-loop delay threshold, requests are refused at once with a 503
 * problem and retry-after instead of queueing with unbounded latency and memory. The database
 * connection queue has its own bound (DB_POOL_QUEUE_MAX, in the tenant pipeline).
 */
async function httpHardening (fastify: FastifyInstance, options: HttpHardeningOptions): Promise<void> {
  // A JSON API: nothing may be framed, embedded or executed from its responses. The /docs page sets
  // its own, wider policy for its static files (see swagger.ts). No helmet defaults: they would add
  // upgrade-insecure-requests, which breaks /docs opened over plain HTTP.
  const headers = securityHeaders({
    contentSecurityPolicy: { directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] }, useDefaults: false },
    crossOriginResourcePolicy: { policy: 'same-site' },
  })
  fastify.addHook('onRequest', async (_request, reply) => { reply.headers(headers) })
  await fastify.register(cors, options.corsOrigins.length === 0
    ? { origin: false }
    : {
        origin: options.corsOrigins,
        methods: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'],
        allowedHeaders: ['authorization', 'content-type', 'idempotency-key', 'x-tenant-id', 'x-request-id'],
        exposedHeaders: ['retry-after', 'x-request-id', 'idempotent-replayed'],
        maxAge: 600,
      })
  if (options.maxEventLoopDelayMs > 0) {
    // Start-up (compiling every route's schemas) blocks the loop for a while, and the sample taken over it
    // would shed the first requests of a server that is idle: the pressure counts from one sample after ready.
    let judgedFrom = Infinity
    fastify.addHook('onReady', async () => { judgedFrom = performance.now() + SAMPLE_INTERVAL_MS })
    await fastify.register(underPressure, {
      sampleInterval: SAMPLE_INTERVAL_MS,
      maxEventLoopDelay: options.maxEventLoopDelayMs,
      // A rejected promise goes to next(error), so the error handler answers (problem+json); sending
      // from here would let the request's other hooks run on after the reply.
      pressureHandler: async (request, _reply, type, value) => {
        if (ALWAYS_SERVED.has(request.url.split('?')[0]!)) return // handled as usual
        if (performance.now() < judgedFrom) return
        request.log.warn({ event: 'load_shed', pressure: type, value }, 'refused: the server is under pressure')
        throw unavailable('the server is overloaded; retry shortly', 1)
      },
    })
  }
}

export default fp(httpHardening, { name: 'http-hardening' })
