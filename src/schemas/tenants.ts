import { Type, type Static } from '@sinclair/typebox'
import { Page, Timestamp, Uuid } from './common.ts'

export const ScopeSchema = Type.Union([Type.Literal('read'), Type.Literal('write'), Type.Literal('admin')])

export const TenantSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  slug: Type.String(),
  created_at: Timestamp,
}, { title: 'Tenant' })
export type Tenant = Static<typeof TenantSchema>

export const CreateTenantSchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200 }),
  slug: Type.String({ pattern: '^[a-z0-9][a-z0-9-]{1,62}$', description: 'lowercase letters, digits and dashes; 2..63 characters' }),
}, { additionalProperties: false })

export const CreatedTenantSchema = Type.Object({
  tenant: TenantSchema,
  api_key: Type.Object({
    id: Uuid,
    key: Type.String({ description: 'the secret key: shown this once, stored only as a hash' }),
    scopes: Type.Array(ScopeSchema),
  }),
})

export const TenantPage = Page(TenantSchema)
