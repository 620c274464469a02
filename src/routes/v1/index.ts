import type { FastifyInstance } from 'fastify'
import tenantContext from '../../plugins/app/tenant-context.ts'
import customers from './customers/index.ts'
import tenant from './tenant/index.ts'

/**
 * Tenant routes. The tenant pipeline is installed on this scope, so every route below runs inside a
 * tenant-bound transaction and nothing outside it does.
 */
export default async function v1 (fastify: FastifyInstance): Promise<void> {
  await fastify.register(tenantContext)
  await fastify.register(tenant, { prefix: '/tenant' })
  await fastify.register(customers, { prefix: '/customers' })
}
