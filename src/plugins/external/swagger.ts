import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

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
    transform: ({ schema, url }) => {
      // Declare the credential each route family takes; the pipeline, not the schema, enforces it.
      const security: Array<Record<string, string[]>> | undefined = url.startsWith('/admin/')
        ? [{ operator: [] }]
        : url.startsWith('/v1/') ? [{ apiKey: [] }, { user: [] }] : undefined
      return { schema: { ...schema, ...(security !== undefined && { security }) }, url }
    },
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })
  fastify.get('/openapi.json', { schema: { hide: true } }, async () => fastify.swagger())
}

export default fp(swaggerPlugin, { name: 'swagger' })
