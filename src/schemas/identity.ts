import { Type, type Static } from '@sinclair/typebox'
import { Page, Text, Timestamp, Uuid } from './common.ts'
import { ScopeSchema } from './tenants.ts'

const OwnerRights = Type.Boolean({
  description: 'whether the key acts with owner rights: adds, promotes, demotes or removes owners and revokes keys ' +
    'that have owner rights. Only with the admin scope, and only when its creation asked for them',
})

export const ApiKeySchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  scopes: Type.Array(ScopeSchema),
  prefix: Type.String({ description: 'the public start of the key, to recognise it' }),
  owner_rights: OwnerRights,
  created_at: Timestamp,
  last_used_at: Type.Union([Timestamp, Type.Null()], {
    description: 'recorded in batches: may lag by up to a few seconds',
  }),
}, { $id: 'ApiKey', title: 'ApiKey' })
export type ApiKey = Static<typeof ApiKeySchema>

export const CreatedApiKeySchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  scopes: Type.Array(ScopeSchema),
  prefix: Type.String(),
  owner_rights: OwnerRights,
  key: Type.String({ description: 'the secret key: shown this once, stored only as a hash' }),
  created_at: Timestamp,
}, { $id: 'CreatedApiKey', title: 'CreatedApiKey' })

export const CreateApiKeySchema = Type.Object({
  name: Text({ minLength: 1, maxLength: 200 }),
  scopes: Type.Array(ScopeSchema, { minItems: 1, maxItems: 3, uniqueItems: true }),
  owner_rights: Type.Optional(Type.Boolean({
    default: false,
    description: 'give the key owner rights: needs the admin scope in scopes (422 otherwise) and a credential ' +
      'that has owner rights itself (403 otherwise)',
  })),
}, { additionalProperties: false, examples: [{ name: 'reporting', scopes: ['read'] }] })

export const ApiKeyPage = Page(ApiKeySchema)

export const RoleSchema = Type.Union([
  Type.Literal('owner'), Type.Literal('admin'), Type.Literal('member'), Type.Literal('viewer'),
], { description: 'viewer: read; member: read, write; admin and owner: read, write, admin' })

export const MemberSchema = Type.Object({
  user_id: Type.String(),
  role: RoleSchema,
  status: Type.Union([Type.Literal('pending'), Type.Literal('active')], {
    description: 'pending until the user accepts with their own token (POST /v1/membership/accept); ' +
      'a pending member has no access',
  }),
  created_at: Timestamp,
  accepted_at: Type.Union([Timestamp, Type.Null()]),
}, { $id: 'Member', title: 'Member' })
export type Member = Static<typeof MemberSchema>

export const CreateMemberSchema = Type.Object({
  user_id: Text({ minLength: 1, maxLength: 255, description: 'the `sub` of the user in your identity provider' }),
  role: RoleSchema,
}, { additionalProperties: false, examples: [{ user_id: 'auth0|ada', role: 'member' }] })

export const UpdateMemberSchema = Type.Object({
  role: RoleSchema,
}, { additionalProperties: false, examples: [{ role: 'viewer' }] })

export const MemberPage = Page(MemberSchema)

export const UserIdParamsSchema = Type.Object({
  user_id: Text({ minLength: 1, maxLength: 255 }),
}, { additionalProperties: false })
