import { Type, type Static } from '@sinclair/typebox'
import { Page, Ref, Text, Timestamp, Uuid } from './common.ts'

export const ScopeSchema = Type.Union([Type.Literal('read'), Type.Literal('write'), Type.Literal('admin')])

export const TenantSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  slug: Type.String(),
  created_at: Timestamp,
}, { $id: 'Tenant', title: 'Tenant' })
export type Tenant = Static<typeof TenantSchema>

export const PlacementSchema = Type.Union([Type.Literal('pooled'), Type.Literal('dedicated')], {
  description: 'pooled: a shared shard (default, no DDL at onboarding); dedicated: partitions of its own in every ' +
    'sharded table',
})

/** What the operator sees of a tenant: its placement and lifecycle status too. */
export const OperatorTenantSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  slug: Type.String(),
  placement: PlacementSchema,
  status: Type.Union([Type.Literal('active'), Type.Literal('moving'), Type.Literal('erasing')], {
    description: 'active; moving: a placement move is in progress (requests are served, and wait while rows ' +
      'move); erasing: credentials revoked, erasure under way or to be retried',
  }),
  created_at: Timestamp,
}, { $id: 'OperatorTenant', title: 'OperatorTenant' })
export type OperatorTenant = Static<typeof OperatorTenantSchema>

export const CreateTenantSchema = Type.Object({
  name: Text({ minLength: 1, maxLength: 200 }),
  // Its pattern admits no NUL byte.
  slug: Type.String({
    pattern: '^[a-z0-9][a-z0-9-]{1,62}$',
    maxLength: 63,
    description: 'lowercase letters, digits and dashes; 2..63 characters',
  }),
  placement: Type.Optional(PlacementSchema),
}, { additionalProperties: false, examples: [{ name: 'Acme Corporation', slug: 'acme' }] })

export const CreateTenantHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    pattern: '^[\\x21-\\x7e]{1,255}$',
    maxLength: 255,
    description: 'for 24 hours, a repeat with the same key and body returns the same tenant (200, ' +
      'idempotent-replayed: true) with a new owner key; the same key with another body is a 409',
  })),
})

export const PlacementChangeSchema = Type.Object({ placement: PlacementSchema }, {
  additionalProperties: false, examples: [{ placement: 'dedicated' }],
})

export const PlacementResultSchema = Type.Object({
  tenant: Ref(OperatorTenantSchema),
  rows_moved: Type.Record(Type.String(), Type.Integer(), { description: 'rows re-sharded per table' }),
}, { $id: 'PlacementResult', title: 'PlacementResult' })

export const CreatedTenantSchema = Type.Object({
  tenant: Ref(OperatorTenantSchema),
  api_key: Type.Object({
    id: Uuid,
    key: Type.String({ description: 'the secret key: shown this once, stored only as a hash' }),
    scopes: Type.Array(ScopeSchema),
  }, { description: 'the first admin key, with owner rights' }),
}, { $id: 'CreatedTenant', title: 'CreatedTenant' })

/** An owner key issued by the operator for an existing tenant. */
export const IssueOwnerKeySchema = Type.Object({
  name: Type.Optional(Text({ minLength: 1, maxLength: 200, description: 'default: "operator-issued key"' })),
  scopes: Type.Optional(Type.Array(ScopeSchema, {
    minItems: 1,
    maxItems: 3,
    uniqueItems: true,
    description: 'default: read, write and admin; with admin, the key has owner rights',
  })),
}, { additionalProperties: false, examples: [{ name: 'recovery key' }] })

export const TenantPage = Page(OperatorTenantSchema)

export const ErasureReceiptSchema = Type.Object({
  id: Uuid,
  tenant_id: Uuid,
  slug: Type.String(),
  placement: PlacementSchema,
  requested_by: Type.String(),
  request_id: Type.Union([Type.String(), Type.Null()]),
  started_at: Timestamp,
  finished_at: Timestamp,
  rows_removed: Type.Record(Type.String(), Type.Integer(), { description: 'rows removed per table' }),
  partitions_dropped: Type.Boolean({
    description: 'dedicated tenants: the emptied partitions were dropped (false: they are left empty and no ' +
      'tenant\'s; the next sweep — any erasure, or POST /admin/v1/maintenance/sweep — drops them and records it ' +
      'on this receipt)',
  }),
  verified: Type.Boolean({ description: 'no table holds a row of the tenant any more (checked from the catalog)' }),
}, { $id: 'ErasureReceipt', title: 'ErasureReceipt' })
