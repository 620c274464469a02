import type { TSchema } from '@sinclair/typebox'
import {
  AuditChainBreakSchema, AuditEventPage, AuditEventSchema, AuditVerificationSchema, FullAuditVerificationSchema,
} from './audit.ts'
import { ProblemSchema } from './common.ts'
import {
  LimitsSchema, PlanListSchema, PlanSchema, RefusalRankingSchema, TenantLimitsSchema, UsageSchema,
} from './limits.ts'
import { EventPage, EventSchema } from './events.ts'
import { ExportPage, ExportSchema } from './exports.ts'
import { CustomerPage, CustomerSchema } from './customers.ts'
import { ApiKeyPage, ApiKeySchema, CreatedApiKeySchema, MemberPage, MemberSchema } from './identity.ts'
import { InvoicePage, InvoiceSchema, LineSchema } from './invoices.ts'
import { SafetyReportSchema, SweepResultSchema } from './maintenance.ts'
import {
  CreatedTenantSchema, ErasureReceiptSchema, OperatorTenantSchema, PlacementResultSchema, TenantPage, TenantSchema,
} from './tenants.ts'
import {
  RedeliveryResultSchema, WebhookAttemptSchema, WebhookDeliveryPage, WebhookDeliverySchema, WebhookEndpointPage,
  WebhookEndpointSchema, WebhookEndpointWithSecretSchema,
} from './webhooks.ts'

/**
 * Every schema with an `$id`: what the API returns, registered with addSchema once (src/app.ts) and
 * referenced with Ref(). Validation and serialization resolve the references by `$id`, and the OpenAPI
 * document lists each once under components.schemas, under its `$id`. Request bodies stay inline in
 * their routes, so that each operation's input is described (and size-checked) where it is declared.
 */
export const SHARED_SCHEMAS: readonly TSchema[] = [
  ProblemSchema,
  TenantSchema,
  CustomerSchema, CustomerPage,
  LineSchema, InvoiceSchema, InvoicePage,
  ApiKeySchema, CreatedApiKeySchema, ApiKeyPage,
  MemberSchema, MemberPage,
  EventSchema, EventPage,
  ExportSchema, ExportPage,
  AuditEventSchema, AuditEventPage, AuditChainBreakSchema, AuditVerificationSchema, FullAuditVerificationSchema,
  OperatorTenantSchema, TenantPage, CreatedTenantSchema, PlacementResultSchema, ErasureReceiptSchema,
  SweepResultSchema, SafetyReportSchema,
  WebhookEndpointSchema, WebhookEndpointWithSecretSchema, WebhookEndpointPage,
  WebhookAttemptSchema, WebhookDeliverySchema, WebhookDeliveryPage, RedeliveryResultSchema,
  LimitsSchema, PlanSchema, PlanListSchema, TenantLimitsSchema, UsageSchema, RefusalRankingSchema,
]
