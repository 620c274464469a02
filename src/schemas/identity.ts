import { Type, type Static } from '@sinclair/typebox'
import { Page, Text, Timestamp, Uuid } from './common.ts'
import { ScopeSchema } from './tenants.ts'

export const ApiKeySchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  scopes: Type.Array(ScopeSchema),
  prefix: Type.String({ description: 'the public start of the key, to recognise it' }),
  created_at: Timestamp,
  last_used_at: Type.Union([Timestamp, Type.Null()], { description: 'recorded in batches: may lag by up to a few seconds' }),
}, { title: 'ApiKey' })
export type ApiKey = Static<typeof ApiKeySchema>

export const CreatedApiKeySchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  scopes: Type.Array(ScopeSchema),
  prefix: Type.String(),
  key: Type.String({ description: 'the secret key: shown this once, stored only as a hash' }),
  created_at: Timestamp,
}, { title: 'CreatedApiKey' })

export const CreateApiKeySchema = Type.Object({
  name: Text({ minLength: 1, maxLength: 200 }),
  scopes: Type.Array(ScopeSchema, { minItems: 1, maxItems: 3, uniqueItems: true }),
}, { additionalProperties: false })

export const ApiKeyPage = Page(ApiKeySchema)

export const RoleSchema = Type.Union([Type.Literal('owner'), Type.Literal('admin'), Type.Literal('member'), Type.Literal('viewer')], {
  description: 'viewer: read; member: read, write; admin and owner: read, write, admin',
})

export const MemberSchema = Type.Object({
  user_id: Type.String(),
  role: RoleSchema,
  status: Type.Union([Type.Literal('pending'), Type.Literal('active')], {
    description: 'pending until the user accepts with their own token (POST /v1/membership/accept); a pending member has no access',
  }),
  created_at: Timestamp,
  accepted_at: Type.Union([Timestamp, Type.Null()]),
}, { title: 'Member' })
export type Member = Static<typeof MemberSchema>

export const CreateMemberSchema = Type.Object({
  user_id: Text({ minLength: 1, maxLength: 255, description: 'the `sub` of the user in your identity provider' }),
  role: RoleSchema,
}, { additionalProperties: false })

export const MemberPage = Page(MemberSchema)

export const UserIdParamsSchema = Type.Object({ user_id: Text({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false })
