import type { FastifyInstance } from 'fastify'
import idempotency from '../../plugins/app/idempotency.ts'
import tenantContext from '../../plugins/app/tenant-context.ts'
import apiKeys from './api-keys/index.ts'
import auditEvents from './audit-events/index.ts'
import customers from './customers/index.ts'
import events from './events/index.ts'
import tenantExports from './exports/index.ts'
import invoices from './invoices/index.ts'
import members from './members/index.ts'
import membership from './membership/index.ts'
import tenant from './tenant/index.ts'
import usage from './usage/index.ts'
import webhookEndpoints from './webhook-endpoints/index.ts'
import type { WebhookSettings } from '../../webhooks/settings.ts'

/**
 * Tenant routes. The tenant pipeline is installed on this scope, so every route below runs inside a
 * tenant-bound transaction and nothing outside it does.
 */
export interface V1Options {
  webhooks: WebhookSettings
  /** How long a tenant's own export stays downloadable once ready. */
  exportTtlMs: number
}

export default async function v1 (fastify: FastifyInstance, options: V1Options): Promise<void> {
  await fastify.register(tenantContext)
  await fastify.register(idempotency)
  await fastify.register(tenant, { prefix: '/tenant' })
  await fastify.register(apiKeys, { prefix: '/api-keys' })
  await fastify.register(members, { prefix: '/members' })
  await fastify.register(membership, { prefix: '/membership' })
  await fastify.register(customers, { prefix: '/customers' })
  await fastify.register(invoices, { prefix: '/invoices' })
  await fastify.register(events, { prefix: '/events' })
  await fastify.register(auditEvents, { prefix: '/audit-events' })
  await fastify.register(tenantExports, { prefix: '/exports', exportTtlMs: options.exportTtlMs })
  await fastify.register(usage, { prefix: '/usage' })
  await fastify.register(webhookEndpoints, { prefix: '/webhook-endpoints', webhooks: options.webhooks })
}
