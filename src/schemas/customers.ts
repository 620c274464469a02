import { Type, type Static } from '@sinclair/typebox'
import { Page, Text, Timestamp, Uuid } from './common.ts'

const Name = Text({ minLength: 1, maxLength: 200 })
const Email = Type.String({ format: 'email', maxLength: 320 })
const ExternalRef = Text({
  minLength: 1, maxLength: 200, description: 'your own reference for the customer; unique within your tenant',
})

export const CustomerSchema = Type.Object({
  id: Uuid,
  name: Name,
  email: Type.Union([Email, Type.Null()]),
  external_ref: Type.Union([ExternalRef, Type.Null()]),
  created_at: Timestamp,
  updated_at: Timestamp,
}, { $id: 'Customer', title: 'Customer' })
export type Customer = Static<typeof CustomerSchema>

// The examples leave external_ref out: it is unique per tenant, so an example holding one would work once only.
export const CreateCustomerSchema = Type.Object({
  name: Name,
  email: Type.Optional(Type.Union([Email, Type.Null()])),
  external_ref: Type.Optional(Type.Union([ExternalRef, Type.Null()])),
}, { additionalProperties: false, examples: [{ name: 'Ada Lovelace', email: 'ada@example.com' }] })
export type CreateCustomer = Static<typeof CreateCustomerSchema>

export const UpdateCustomerSchema = Type.Object({
  name: Type.Optional(Name),
  email: Type.Optional(Type.Union([Email, Type.Null()])),
  external_ref: Type.Optional(Type.Union([ExternalRef, Type.Null()])),
}, { additionalProperties: false, minProperties: 1, examples: [{ email: 'ada@analytical.example' }] })
export type UpdateCustomer = Static<typeof UpdateCustomerSchema>

export const CustomerPage = Page(CustomerSchema)
