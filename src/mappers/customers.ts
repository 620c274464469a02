import type { CustomerRow } from '../repositories/customers.ts'
import type { Customer } from '../schemas/customers.ts'

export function toCustomer (row: CustomerRow): Customer {
  return {
    id: row.id,
    name: row.name,
    email: row.email,
    external_ref: row.external_ref,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  }
}
