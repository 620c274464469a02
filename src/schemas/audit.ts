import { Type, type Static } from '@sinclair/typebox'
import { Page, Timestamp, Uuid } from './common.ts'

export const AuditEventSchema = Type.Object({
  id: Uuid,
  seq: Type.Integer({ description: "position in the tenant's hash chain, from 1" }),
  occurred_at: Timestamp,
  actor: Type.Object({ type: Type.String({ description: 'api_key or user' }), id: Type.String() }),
  action: Type.String({ description: 'e.g. invoice.finalized' }),
  resource: Type.Object({ type: Type.String(), id: Type.String() }),
  request_id: Type.Union([Type.String(), Type.Null()]),
  data: Type.Record(Type.String(), Type.Unknown()),
  hash: Type.String({ description: 'hex SHA-256 over the previous hash and this event' }),
}, { title: 'AuditEvent' })
export type AuditEvent = Static<typeof AuditEventSchema>

export const AuditEventPage = Page(AuditEventSchema)

export const AuditVerificationSchema = Type.Object({
  ok: Type.Boolean(),
  events: Type.Integer(),
  first_broken: Type.Union([Type.Object({
    id: Type.Union([Uuid, Type.Null()]),
    seq: Type.Integer(),
    reason: Type.String(),
  }), Type.Null()]),
}, { title: 'AuditVerification' })
