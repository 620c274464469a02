import type { Selectable } from 'kysely'
import type { Tenants } from '../db/schema.ts'
import type { OperatorTenant, Tenant } from '../schemas/tenants.ts'

export function toTenant (row: Selectable<Tenants>): Tenant {
  return { id: row.id, name: row.name, slug: row.slug, created_at: row.created_at.toISOString() }
}

export function toOperatorTenant (row: Selectable<Tenants>): OperatorTenant {
  return {
    id: row.id,
    name: row.name,
    slug: row.slug,
    placement: row.placement as OperatorTenant['placement'],
    status: row.status as OperatorTenant['status'],
    created_at: row.created_at.toISOString(),
  }
}
