import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ProblemSchema } from '../../schemas/common.ts'

/** Headers of the tenant routes, documented here; the tenant pipeline and idempotency plugin validate them. */
const TenantIdHeader = Type.String({ format: 'uuid', maxLength: 36, description: 'optional; must be the tenant of an API key, selects the tenant of a user' })
const IdempotencyKeyHeader = Type.String({ minLength: 1, maxLength: 255, description: 'replays the first response for 24 hours; another body with the same key is a 409' })

/** Errors of every route that takes a body, raised by Fastify before validation. */
const BODY_PROBLEMS = {
  413: { description: 'the body is larger than the server accepts (BODY_LIMIT_BYTES)', content: { 'application/problem+json': { schema: ProblemSchema } } },
  415: { description: 'the body is not application/json', content: { 'application/problem+json': { schema: ProblemSchema } } },
}

function headersFor (existing: unknown, isPost: boolean): TSchema {
  const declared = (existing as { properties?: Record<string, TSchema> } | undefined)?.properties ?? {}
  return Type.Object({
    ...declared,
    'x-tenant-id': Type.Optional(TenantIdHeader),
    ...(isPost && { 'idempotency-key': Type.Optional(IdempotencyKeyHeader) }),
  })
}

function withoutUpgradeInsecureRequests (policy: string): string {
  return policy.split(';').map((d) => d.trim())
    .filter((d) => d !== '' && d.toLowerCase() !== 'upgrade-insecure-requests')
    .join('; ')
}

/**
 * OpenAPI 3.1 generated from the route schemas (TypeBox is the single source), served at
 * /openapi.json, with a browsable page at /docs.
 */
async function swaggerPlugin (fastify: FastifyInstance): Promise<void> {
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'rowfence',
        version: '1.0.0',
        description: 'Multi-tenant API where PostgreSQL row-level security keeps every tenant to its own rows. ' +
          'Errors are application/problem+json (RFC 9457).',
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'tenant API key (rfk_...); x-tenant-id optional, must match' },
          user: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'user JWT (sub, exp; tenant from x-tenant-id or the tid claim)' },
          operator: { type: 'http', scheme: 'bearer', description: 'operator token (ADMIN_TOKEN)' },
        },
      },
    },
    transform: ({ schema, url, route }) => {
      // Declare the credential and headers each route family takes; the pipeline, not the schema,
      // enforces them (they are documented here and validated in src/plugins/app/).
      const tenantRoute = url.startsWith('/v1/')
      const isPost = ([] as string[]).concat(route.method).includes('POST')
      const headers = tenantRoute ? headersFor(schema.headers, isPost) : schema.headers
      const security: Array<Record<string, string[]>> | undefined = url.startsWith('/admin/')
        ? [{ operator: [] }]
        : url.startsWith('/v1/') ? [{ apiKey: [] }, { user: [] }] : undefined
      const response = schema.body !== undefined && schema.response !== undefined
        ? { ...BODY_PROBLEMS, ...(schema.response as Record<string, unknown>) }
        : schema.response
      return {
        schema: {
          ...schema,
          ...(security !== undefined && { security }),
          ...(headers !== undefined && { headers }),
          ...(response !== undefined && { response }),
        },
        url,
      }
    },
  })
  // The page's own policy (its scripts and styles from 'self') minus upgrade-insecure-requests:
  // opened over plain HTTP by a host name other than localhost (http://server:3000/docs), it would make
  // the browser fetch the page's scripts over https, where nothing answers, and show a blank page.
  await fastify.register(swaggerUi, {
    routePrefix: '/docs', staticCSP: true, transformStaticCSP: withoutUpgradeInsecureRequests,
  })
  fastify.get('/openapi.json', { schema: { hide: true } }, async () => fastify.swagger())
}

export default fp(swaggerPlugin, { name: 'swagger' })
