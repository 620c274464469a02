import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ProblemSchema, Ref } from '../../schemas/common.ts'

/** Headers of the tenant routes, documented here; the tenant pipeline and idempotency plugin validate them. */
const TenantIdHeader = Type.String({
  format: 'uuid',
  maxLength: 36,
  description: 'optional; must be the tenant of an API key, selects the tenant of a user',
})
const IdempotencyKeyHeader = Type.String({
  minLength: 1,
  maxLength: 255,
  description: 'replays the first response for 24 hours; another body with the same key is a 409',
})

const problem = (description: string) => ({
  description, content: { 'application/problem+json': { schema: Ref(ProblemSchema) } },
})
/** Errors of every route that takes a body, raised by Fastify before validation. */
const BODY_PROBLEMS = {
  413: problem('the body is larger than the server accepts (BODY_LIMIT_BYTES)'),
  415: problem('the body is not application/json'),
}

const TAGS = [
  { name: 'tenant', description: 'The tenant the credential acts for' },
  { name: 'customers', description: 'Customers of the tenant, whom invoices are addressed to' },
  { name: 'invoices', description: 'Invoices: drafts, then open (numbered), then paid or void' },
  { name: 'api-keys', description: "The tenant's API keys (admin scope)" },
  { name: 'members', description: "Users' memberships of the tenant, and accepting one" },
  { name: 'events', description: "Changes to the tenant's resources, in the order they were made" },
  { name: 'webhooks', description: "Endpoints that receive the tenant's events, and their deliveries (admin scope)" },
  { name: 'exports', description: "The tenant's own export of its data, made in the background (admin scope)" },
  { name: 'audit', description: "The tenant's hash-chained audit trail (admin scope)" },
  { name: 'operator', description: 'Provisioning, placement, export, erasure and maintenance (operator token)' },
  { name: 'service', description: 'Liveness and readiness, without credentials' },
]

interface ObjectSchema { properties?: Record<string, TSchema & { default?: unknown }>, required?: string[] }

function headersFor (existing: unknown, isPost: boolean): TSchema {
  const declared = (existing as ObjectSchema | undefined)?.properties ?? {}
  return Type.Object({
    ...declared,
    'x-tenant-id': Type.Optional(TenantIdHeader),
    ...(isPost && { 'idempotency-key': Type.Optional(IdempotencyKeyHeader) }),
  })
}

/**
 * A parameter with a default may be left out: validation fills it in, which is why the TypeBox
 * schema (the type the handler sees) has it required while a client need not send it.
 */
function defaultsOptional (schema: unknown): unknown {
  const object = schema as ObjectSchema | undefined
  if (object?.properties === undefined || object.required === undefined) return schema
  const properties = object.properties
  return { ...object, required: object.required.filter((name) => properties[name]?.default === undefined) }
}

/** Who may call a route: tenant routes take an API key or a user's JWT, operator routes the operator token. */
function securityFor (url: string): Array<Record<string, string[]>> {
  if (url.startsWith('/admin/')) return [{ operator: [] }]
  if (url.startsWith('/v1/')) return [{ apiKey: [] }, { user: [] }]
  return [] // public: stated, so that no credential is assumed
}

/**
 * Removes the `transform` keyword (ajv-keywords: ids are lower-cased as they are validated) from every
 * schema of the document: it is not JSON Schema, and means nothing to a reader or a generated client.
 * A property that happens to be named `transform` is kept (keys of `properties` are names, not keywords).
 */
function withoutAjvKeywords (node: unknown, parentKey = ''): unknown {
  if (Array.isArray(node)) return node.map((item) => withoutAjvKeywords(item))
  if (typeof node !== 'object' || node === null) return node
  return Object.fromEntries(Object.entries(node)
    .filter(([key, value]) => !(key === 'transform' && parentKey !== 'properties' && Array.isArray(value)))
    .map(([key, value]) => [key, withoutAjvKeywords(value, key)]))
}

function withoutUpgradeInsecureRequests (policy: string): string {
  return policy.split(';').map((d) => d.trim())
    .filter((d) => d !== '' && d.toLowerCase() !== 'upgrade-insecure-requests')
    .join('; ')
}

/**
 * OpenAPI 3.1 generated from the route schemas (TypeBox is the single source), served at
 * /openapi.json, with a browsable page at /docs. The schemas registered with addSchema
 * (src/schemas/shared.ts) become components.schemas under their `$id`, and every Ref() to one a `$ref`.
 */
async function swaggerPlugin (fastify: FastifyInstance): Promise<void> {
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'rowfence',
        version: '1.0.0',
        description: 'Multi-tenant API where PostgreSQL row-level security keeps every tenant to its own rows. ' +
          'Errors are application/problem+json (RFC 9457). Lists are paged: pass a page\'s next_cursor as ' +
          '?cursor= for the next one, until it is null.',
      },
      // Relative: requests go to whichever host served the document (Try it out on /docs, too).
      servers: [{ url: '/', description: 'the server that serves this document' }],
      tags: TAGS,
      components: {
        securitySchemes: {
          apiKey: {
            type: 'http', scheme: 'bearer', description: 'tenant API key (rfk_...); x-tenant-id optional, must match',
          },
          user: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description: 'user JWT (sub, exp; tenant from x-tenant-id or the tid claim)',
          },
          operator: { type: 'http', scheme: 'bearer', description: 'operator token (ADMIN_TOKEN)' },
        },
      },
    },
    // Components are named by their $id (Invoice, not def-3), which is what generated clients call them.
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`,
    },
    transformObject: (document) => {
      if (!('openapiObject' in document)) throw new Error('expected an OpenAPI 3 document')
      return withoutAjvKeywords(document.openapiObject) as typeof document.openapiObject
    },
    transform: ({ schema, url, route }) => {
      // Declare the credential and headers each route family takes; the pipeline, not the schema,
      // enforces them (they are documented here and validated in src/plugins/app/).
      const tenantRoute = url.startsWith('/v1/')
      const isPost = ([] as string[]).concat(route.method).includes('POST')
      const headers = tenantRoute ? headersFor(schema.headers, isPost) : schema.headers
      const response = schema.body !== undefined && schema.response !== undefined
        ? { ...BODY_PROBLEMS, ...(schema.response as Record<string, unknown>) }
        : schema.response
      return {
        schema: {
          ...schema,
          security: securityFor(url),
          ...(schema.querystring !== undefined && { querystring: defaultsOptional(schema.querystring) }),
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
    routePrefix: '/docs',
    staticCSP: true,
    transformStaticCSP: withoutUpgradeInsecureRequests,
    theme: { title: 'rowfence API' },
    // The key entered in Authorize survives a reload (kept in the browser's localStorage).
    uiConfig: { persistAuthorization: true, displayOperationId: true },
  })
  fastify.get('/openapi.json', { schema: { hide: true } }, async () => fastify.swagger())
}

export default fp(swaggerPlugin, { name: 'swagger' })
