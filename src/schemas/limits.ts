import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { LIMIT_NAMES, type LimitName } from '../limits/limits.ts'
import { Ref, Timestamp } from './common.ts'

const LIMIT_DESCRIPTIONS: Record<LimitName, string> = {
  requests_per_second: 'sustained request rate: requests per second, averaged over a minute',
  burst: 'requests in any one second',
  concurrent_requests: 'database connections the tenant may hold at once (per server instance)',
  invoices_created: 'invoices created per billing period',
  customers: 'customers at any time',
  api_keys: 'live API keys at any time',
  members: 'members (invitations included) at any time',
  webhook_endpoints: 'webhook endpoints at any time',
  events_delivered: 'webhook deliveries that succeeded, per billing period',
  export_bytes: 'bytes of the tenant\'s own exports, per billing period',
}

/** Rates and the share start at 1 (0 would lock the tenant out for good); a quota of 0 allows none. */
const MINIMUM: Partial<Record<LimitName, number>> = { requests_per_second: 1, burst: 1, concurrent_requests: 1 }

const LimitValue = (name: LimitName): TSchema => Type.Union([
  Type.Integer({ minimum: MINIMUM[name] ?? 0, maximum: 1e15 }), Type.Null(),
], {
  description: `${LIMIT_DESCRIPTIONS[name]}; null: unlimited`,
})

/** Some limits: a name left out falls to the next layer (overrides → plan → the server's defaults). */
export const PartialLimitsSchema = Type.Object(
  Object.fromEntries(LIMIT_NAMES.map((name) => [name, Type.Optional(LimitValue(name))])),
  { additionalProperties: false, description: 'limits by name; a name left out falls to the next layer' })

/** Every limit, as it applies. */
export const LimitsSchema = Type.Object(
  Object.fromEntries(LIMIT_NAMES.map((name) => [name, LimitValue(name)])),
  { $id: 'Limits', title: 'Limits', description: 'every limit in force; null: unlimited' })

export const PlanNameSchema = Type.String({
  pattern: '^[a-z0-9][a-z0-9_-]{0,62}$', maxLength: 63, description: 'the plan\'s name',
})

export const PlanSchema = Type.Object({
  name: PlanNameSchema,
  limits: PartialLimitsSchema,
  tenants: Type.Integer({ minimum: 0, description: 'tenants on this plan' }),
  created_at: Timestamp,
  updated_at: Timestamp,
}, { $id: 'Plan', title: 'Plan', description: 'a named set of limits the operator assigns to tenants' })

export const PlanListSchema = Type.Object({
  data: Type.Array(Ref(PlanSchema)),
}, { $id: 'PlanList', title: 'PlanList', description: 'every plan, by name' })

export const TenantLimitsSchema = Type.Object({
  plan: Type.Union([PlanNameSchema, Type.Null()], { description: 'the tenant\'s plan; null: the server\'s defaults' }),
  overrides: PartialLimitsSchema,
  effective: Ref(LimitsSchema, 'what applies: the overrides, else the plan, else the server\'s defaults'),
  updated_at: Type.Union([Timestamp, Type.Null()], { description: 'when the operator last changed them' }),
}, { $id: 'TenantLimits', title: 'TenantLimits', description: 'a tenant\'s plan, its own overrides, and the result' })

export const PeriodSchema = Type.String({
  pattern: '^2[0-9]{3}-(0[1-9]|1[0-2])$', maxLength: 7, description: 'a billing period: a UTC calendar month, YYYY-MM',
})

export const UsageCounterSchema = Type.Object({
  name: Type.String({ description: 'the counter: a quota\'s name, or requests, invoices_finalized, refusals_*' }),
  used: Type.Integer({ minimum: 0 }),
  limit: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'the quota; null: none' }),
  resets_at: Type.Union([Timestamp, Type.Null()], {
    description: 'when the counter starts again from 0; null for live objects (customers, keys, members, endpoints)',
  }),
})

export const UsageSchema = Type.Object({
  period: PeriodSchema,
  starts_at: Timestamp,
  ends_at: Timestamp,
  counters: Type.Array(UsageCounterSchema),
  days: Type.Array(Type.Object({
    day: Type.String({ format: 'date' }),
    counters: Type.Record(Type.String(), Type.Integer({ minimum: 0 })),
  }), { description: 'the period\'s counters per UTC day' }),
}, { $id: 'Usage', title: 'Usage', description: 'what the tenant used in a billing period, against its quotas' })

export const RefusalRankingSchema = Type.Object({
  period: PeriodSchema,
  data: Type.Array(Type.Object({
    tenant_id: Type.String({ format: 'uuid' }),
    slug: Type.Union([Type.String(), Type.Null()]),
    refusals: Type.Integer({ minimum: 0 }),
    rate: Type.Integer({ minimum: 0 }),
    concurrency: Type.Integer({ minimum: 0 }),
    quota: Type.Integer({ minimum: 0 }),
  })),
}, { $id: 'RefusalRanking', title: 'RefusalRanking', description: 'the tenants refused most in a period' })

export type PartialLimitsBody = Static<typeof PartialLimitsSchema>
