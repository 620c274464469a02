import { Type, type Static } from '@sinclair/typebox'
import { Page, Ref, Text, Timestamp, Uuid } from './common.ts'

export const InvoiceStatusSchema = Type.Union([
  Type.Literal('draft'), Type.Literal('open'), Type.Literal('paid'), Type.Literal('void'),
])
export type InvoiceStatus = Static<typeof InvoiceStatusSchema>

const Currency = Type.String({ pattern: '^[A-Z]{3}$', maxLength: 3, description: 'ISO 4217 code, e.g. EUR' })
const DueDate = Type.String({ format: 'date', maxLength: 10, description: 'YYYY-MM-DD' })
const Memo = Text({ maxLength: 2000 })

export const LineInputSchema = Type.Object({
  description: Text({ minLength: 1, maxLength: 500 }),
  quantity: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
  unit_amount_cents: Type.Integer({ minimum: 0, maximum: 100_000_000_000 }),
}, { additionalProperties: false })
export type LineInput = Static<typeof LineInputSchema>

const Lines = Type.Array(LineInputSchema, { minItems: 1, maxItems: 100 })

export const LineSchema = Type.Object({
  description: Type.String(),
  quantity: Type.Integer(),
  unit_amount_cents: Type.Integer(),
  amount_cents: Type.Integer({ description: 'quantity × unit_amount_cents' }),
}, { $id: 'InvoiceLine', title: 'InvoiceLine' })

export const InvoiceSchema = Type.Object({
  id: Uuid,
  customer_id: Uuid,
  number: Type.Union([
    Type.String({ description: 'INV-000001, assigned at finalization, gap-free per tenant' }), Type.Null(),
  ]),
  status: InvoiceStatusSchema,
  currency: Type.String(),
  lines: Type.Array(Ref(LineSchema)),
  amount_cents: Type.Integer({ description: 'Σ lines.amount_cents, at most 2^53 − 1' }),
  due_date: Type.Union([DueDate, Type.Null()]),
  memo: Type.Union([Type.String(), Type.Null()]),
  created_at: Timestamp,
  updated_at: Timestamp,
  finalized_at: Type.Union([Timestamp, Type.Null()]),
  paid_at: Type.Union([Timestamp, Type.Null()]),
  voided_at: Type.Union([Timestamp, Type.Null()]),
}, { $id: 'Invoice', title: 'Invoice' })
export type Invoice = Static<typeof InvoiceSchema>

/**
 * An id no tenant's customer has: the documented example cannot know one of yours, so "Try it out"
 * on /docs needs an id of yours put in its place (a 422 says so otherwise).
 */
export const EXAMPLE_CUSTOMER_ID = '01900000-0000-7000-8000-000000000000'

export const CreateInvoiceSchema = Type.Object({
  customer_id: Uuid,
  currency: Currency,
  lines: Lines,
  due_date: Type.Optional(Type.Union([DueDate, Type.Null()])),
  memo: Type.Optional(Type.Union([Memo, Type.Null()])),
}, {
  additionalProperties: false,
  examples: [{
    customer_id: EXAMPLE_CUSTOMER_ID,
    currency: 'EUR',
    lines: [{ description: 'Consulting, March', quantity: 3, unit_amount_cents: 12_500 }],
    due_date: '2030-04-30',
    memo: 'Thank you for your business',
  }],
})
export type CreateInvoice = Static<typeof CreateInvoiceSchema>

export const UpdateInvoiceSchema = Type.Object({
  customer_id: Type.Optional(Uuid),
  currency: Type.Optional(Currency),
  lines: Type.Optional(Lines),
  due_date: Type.Optional(Type.Union([DueDate, Type.Null()])),
  memo: Type.Optional(Type.Union([Memo, Type.Null()])),
}, { additionalProperties: false, minProperties: 1, examples: [{ memo: 'Payable within 30 days' }] })
export type UpdateInvoice = Static<typeof UpdateInvoiceSchema>

export const InvoiceListQuerySchema = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50, description: 'page size' }),
  cursor: Type.Optional(Text({ minLength: 1, maxLength: 200, description: 'opaque cursor from next_cursor' })),
  status: Type.Optional(InvoiceStatusSchema),
  customer_id: Type.Optional(Uuid),
}, { additionalProperties: false })

export const InvoicePage = Page(InvoiceSchema)
