import { Type, type Static } from '@sinclair/typebox'
import { Page, Ref, Timestamp, Uuid } from './common.ts'

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
}, { $id: 'AuditEvent', title: 'AuditEvent' })
export type AuditEvent = Static<typeof AuditEventSchema>

export const AuditEventPage = Page(AuditEventSchema)

export const AuditChainBreakSchema = Type.Object({
  id: Type.Union([Uuid, Type.Null()]),
  seq: Type.Integer(),
  reason: Type.String(),
}, { $id: 'AuditChainBreak', title: 'AuditChainBreak', description: 'where the hash chain stops holding, and why' })

const ChainBreak = Type.Union([Ref(AuditChainBreakSchema), Type.Null()], {
  description: 'the first event (in chain order) whose link does not hold, and why; null when none was found',
})

const Described = (description: string) => ({ description })

export const AuditVerificationSchema = Type.Object({
  ok: Type.Boolean(Described('no break was found in what this call checked (see complete)')),
  events: Type.Integer(Described("the chain's length as its head records it: the number of events while the chain " +
    'holds')),
  first_broken: ChainBreak,
  complete: Type.Boolean(Described('false: no break so far but events remain after verified_through; call again to ' +
    'continue from there')),
  verified_through: Type.Integer(Described('the position up to which the chain holds, as far as this call and the ' +
    'checkpoint it started from can tell')),
  from_checkpoint: Type.Integer(Described('the checkpoint this call started from (0: the first event); events before ' +
    'it were not re-examined')),
  examined: Type.Integer(Described('events whose hash and link this call recomputed, the checkpointed event ' +
    'included')),
  checkpoint_recorded: Type.Union([Type.Integer(), Type.Null()],
    Described('the checkpoint this call recorded (null: none, no progress or a break)')),
}, { $id: 'AuditVerification', title: 'AuditVerification' })
export type AuditVerification = Static<typeof AuditVerificationSchema>

export const FullAuditVerificationSchema = Type.Object({
  ok: Type.Boolean(),
  events: Type.Integer(Described("the chain's length as its head records it")),
  examined: Type.Integer(Described("events whose hash and link were recomputed (each batch's starting event again)")),
  batches: Type.Integer(Described('bounded statements (each its own short transaction) the walk took')),
  first_broken: ChainBreak,
  checkpoint_recorded: Type.Union([Type.Integer(), Type.Null()],
    Described('the checkpoint recorded at the head when the whole chain held')),
}, { $id: 'FullAuditVerification', title: 'FullAuditVerification' })
export type FullAuditVerification = Static<typeof FullAuditVerificationSchema>
