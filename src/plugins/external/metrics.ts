import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { bearerToken, CredentialRejected } from '../../auth/credentials.ts'
import { PROBLEM_BASE, PROBLEM_CONTENT_TYPE, unauthorized } from '../../errors.ts'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Registry
  }
}

export interface MetricsOptions {
  /** The bearer token a scraper sends (METRICS_TOKEN, else ADMIN_TOKEN). */
  token: string
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])

const PROBLEM_TYPE = new RegExp(`"type":"${PROBLEM_BASE.replaceAll('.', '\\.')}([a-z-]{1,40})"`)

/**
 * Prometheus metrics at /metrics, for a scraper with the metrics token only: they tell request
 * volumes and error rates to anyone who can read them. Labels are bounded: the route pattern (never
 * the raw URL), the method and the status code; no tenant, key or user ever becomes a label.
 */
async function metricsPlugin (fastify: FastifyInstance, options: MetricsOptions): Promise<void> {
  // Both sides hashed before the constant-time comparison, so neither length nor content leaks through timing.
  const expected = digest(options.token)
  const registry = new Registry()
  const requests = new Counter({
    name: 'rowfence_http_requests_total',
    help: 'HTTP requests',
    labelNames: ['route', 'method', 'status'],
    registers: [registry],
  })
  const duration = new Histogram({
    name: 'rowfence_http_request_duration_seconds',
    help: 'HTTP request duration',
    labelNames: ['route', 'method', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  })
  // Monotonic counts kept by the pool observer (src/db/database.ts), exported as counters.
  const mirror = (name: string, help: string, read: () => number): void => {
    let exported = 0
    registry.registerMetric(new Counter({
      name,
      help,
      registers: [],
      collect () {
        const now = read()
        this.inc(now - exported)
        exported = now
      },
    }))
  }
  mirror('rowfence_db_statements_total', 'statements sent on the runtime connections',
    () => fastify.dbTraffic.statements)
  mirror('rowfence_db_round_trips_total', 'round trips to the database on the runtime connections',
    () => fastify.dbTraffic.roundTrips)
  registry.registerMetric(new Gauge({
    name: 'rowfence_db_pool_connections',
    help: 'runtime pool connections by state',
    labelNames: ['state'],
    registers: [],
    collect () {
      const pool = fastify.dbPool
      this.set({ state: 'total' }, pool.totalCount)
      this.set({ state: 'idle' }, pool.idleCount)
      this.set({ state: 'in_use' }, pool.totalCount - pool.idleCount)
      this.set({ state: 'waiting' }, pool.waitingCount)
    },
  }))
  fastify.decorate('metrics', registry)

  const errors = new Counter({
    name: 'rowfence_http_errors_total',
    help: 'error responses by problem type (the slug of the problem type URI: validation, unauthorized, ' +
      'unavailable, internal, ...)',
    labelNames: ['type'],
    registers: [registry],
  })

  // The problem type of each error response, read off the serialised problem (every error is one).
  const problemTypes = new WeakMap<FastifyRequest, string>()
  fastify.addHook('onSend', async (request, reply, payload) => {
    if (reply.statusCode >= 400 && typeof payload === 'string') {
      const slug = PROBLEM_TYPE.exec(payload)?.[1]
      if (slug !== undefined) problemTypes.set(request, slug)
    }
    return payload
  })

  fastify.addHook('onResponse', async (request, reply) => {
    // The route pattern, never the raw URL; an unknown method stays out of the label set too.
    const route = request.routeOptions.url ?? 'unmatched'
    const method = KNOWN_METHODS.has(request.method) ? request.method : 'OTHER'
    const status = String(reply.statusCode)
    requests.inc({ route, method, status })
    duration.observe({ route, method, status }, reply.elapsedTime / 1000)
    if (reply.statusCode >= 400) {
      errors.inc({ type: problemTypes.get(request) ?? (reply.statusCode >= 500 ? 'internal' : 'other') })
    }
  })

  fastify.get('/metrics', {
    schema: { hide: true },
    onRequest: async (request, reply) => {
      let reason: string | undefined
      try {
        if (!timingSafeEqual(digest(bearerToken(request.headers)), expected)) reason = 'wrong metrics token'
      } catch (error) {
        if (!(error instanceof CredentialRejected)) throw error
        reason = error.reason
      }
      if (reason !== undefined) {
        request.log.warn({ event: 'access_denied', status: 401, reason }, `access denied: ${reason}`)
        // Sent from here: this route is registered before the app's error handler, which a thrown
        // problem would therefore not reach.
        const problem = unauthorized('/metrics needs the metrics token (METRICS_TOKEN, or ADMIN_TOKEN if unset)')
        return reply.code(problem.status).headers(problem.headers).type(PROBLEM_CONTENT_TYPE)
          .send(problem.toJSON('/metrics'))
      }
    },
  }, async (_request, reply) => {
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}

export default fp(metricsPlugin, { name: 'metrics', dependencies: ['db'] })
