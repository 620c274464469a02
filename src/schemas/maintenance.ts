import { Type } from '@sinclair/typebox'
import { Uuid } from './common.ts'

export const SweepResultSchema = Type.Object({
  tenants_reset: Type.Array(Uuid, {
    description: 'tenants left `moving` by a placement move that died, set back to active (where they were)',
  }),
  shards_released: Type.Array(Type.Integer(), {
    description: 'dedicated shards no tenant lives in whose empty partitions were dropped (noted on their erasure ' +
      'receipts)',
  }),
  shards_left: Type.Array(Type.Integer(), {
    description: 'such shards that could not be released now (an operation still running, or the tables busy): ' +
      'sweep again later',
  }),
  events_deleted: Type.Integer({ description: 'events older than EVENT_RETENTION_DAYS deleted (all tenants)' }),
  exports_deleted: Type.Integer({ description: 'tenant exports past their expires_at deleted, files included' }),
  usage_periods_closed: Type.Integer({ description: 'usage.period_closed events sent (one per tenant and period)' }),
}, { $id: 'SweepResult', title: 'SweepResult' })

export const SafetyReportSchema = Type.Object({
  ok: Type.Boolean({ description: 'true when every isolation safety check holds' }),
  problems: Type.Array(Type.String(), { description: 'each check that does not hold, in words' }),
}, { $id: 'SafetyReport', title: 'SafetyReport' })
