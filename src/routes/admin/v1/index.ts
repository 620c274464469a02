import type { FastifyInstance } from 'fastify'
import operatorAuth from '../../../plugins/app/operator-auth.ts'
import erasureReceipts from './erasure-receipts/index.ts'
import maintenance from './maintenance/index.ts'
import plans from './plans/index.ts'
import tenantAudit from './tenant-audit/index.ts'
import tenantKeys from './tenant-keys/index.ts'
import tenantLimits from './tenant-limits/index.ts'
import tenantSlugs from './tenant-slugs/index.ts'
import tenants from './tenants/index.ts'
import usage from './usage/index.ts'

export interface AdminOptions {
  adminToken: string
  cacheGraceMs: number
  /** Signs tenant exports; undefined: exports are refused. */
  exportSigningKey: string | undefined
  /** Events older than this are deleted by the maintenance sweep (EVENT_RETENTION_DAYS). */
  eventRetentionDays: number
}

/** Operator routes: the operator token only, and the owner connection, never a tenant transaction. */
export default async function adminV1 (fastify: FastifyInstance, options: AdminOptions): Promise<void> {
  await fastify.register(operatorAuth, { adminToken: options.adminToken })
  await fastify.register(tenants, {
    prefix: '/tenants', cacheGraceMs: options.cacheGraceMs, exportSigningKey: options.exportSigningKey,
  })
  await fastify.register(tenantAudit, { prefix: '/tenants' })
  await fastify.register(tenantKeys, { prefix: '/tenants' })
  await fastify.register(tenantLimits, { prefix: '/tenants' })
  await fastify.register(plans, { prefix: '/plans' })
  await fastify.register(usage, { prefix: '/usage' })
  await fastify.register(tenantSlugs, { prefix: '/tenant-slugs' })
  await fastify.register(erasureReceipts, { prefix: '/erasure-receipts' })
  await fastify.register(maintenance, { prefix: '/maintenance', eventRetentionDays: options.eventRetentionDays })
}
