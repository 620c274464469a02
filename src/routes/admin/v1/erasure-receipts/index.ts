import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { toErasureReceipt } from '../../../../mappers/erasure-receipts.ts'
import { listErasureReceipts } from '../../../../repositories/erasure-receipts.ts'
import { PageQuerySchema, paginate, problems, Ref, Uuid } from '../../../../schemas/common.ts'
import { ErasureReceiptSchema } from '../../../../schemas/tenants.ts'

const ReceiptQuerySchema = Type.Object({
  ...PageQuerySchema.properties,
  tenant_id: Type.Optional(Uuid),
}, { additionalProperties: false })

// Not a shared Page(): the one list of receipts, described where it is declared.
const ReceiptPageSchema = Type.Object({
  data: Type.Array(Ref(ErasureReceiptSchema)),
  next_cursor: Type.Union([Type.String(), Type.Null()], {
    description: 'pass as ?cursor= for the next page; null on the last page',
  }),
}, { description: 'erasure receipts, the latest erasure first' })

/**
 * Erasure receipts: what an erasure removed and that it verified nothing was left, kept outside the
 * erased tenant's data (which is gone), so an operator can show a tenant's erasure after the fact.
 */
const erasureReceipts: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    schema: {
      operationId: 'adminListErasureReceipts',
      summary: 'List erasure receipts, the latest first',
      description: 'The receipt DELETE /admin/v1/tenants/:id returned, kept for every erasure: the rows removed per ' +
        'table, whether the catalog showed nothing left (verified) and whether a dedicated tenant\'s partitions were ' +
        'dropped (a later sweep sets it). tenant_id narrows the list to one erased tenant.',
      tags: ['operator'],
      querystring: ReceiptQuerySchema,
      response: { 200: ReceiptPageSchema, ...problems(400, 401, 503) },
    },
  }, async (request) => {
    const { tenant_id: tenantId, ...page } = request.query
    return paginate(page, (p) => listErasureReceipts(fastify.ownerDb, { ...p, tenantId }), toErasureReceipt)
  })
}

export default erasureReceipts
