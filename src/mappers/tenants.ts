import type { Selectable } from 'kysely'
import type { Tenants } from '../db/schema.ts'
import type { Tenant } from '../schemas/tenants.ts'

export function toTenant (row: Selectable<Tenants>): Tenant {
  return { id: row.id, name: row.name, slug: row.slug, created_at: row.created_at.toISOString() }
}
