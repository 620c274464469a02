import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { inSendOrder } from '../../../db/in-send-order.ts'
import { newId } from '../../../ids.ts'
import { audit } from '../../../audit.ts'
import { conflict, notFound } from '../../../errors.ts'
import { formatInvoiceNumber, toInvoice } from '../../../mappers/invoices.ts'
import { priceLines } from '../../../money.ts'
import {
  findInvoice, insertInvoice, invoiceStateSql, listInvoicePage, lockInvoiceStatus, nextInvoiceNumber, updateInvoice,
  type InvoiceRow,
} from '../../../repositories/invoices.ts'
import { decodeCursor, encodeCursor, IdParamsSchema, problems, Ref } from '../../../schemas/common.ts'
import {
  CreateInvoiceSchema, InvoiceListQuerySchema, InvoicePage, InvoiceSchema, UpdateInvoiceSchema,
} from '../../../schemas/invoices.ts'

const tags = ['invoices']
const errors = [400, 401, 403, 503]

/**
 * Locks the invoice and checks it is in `from`: 404 when the tenant has no such invoice, 409 for
 * any other status. The lock serialises concurrent transitions of one invoice.
 */
async function requireStatus (
  request: FastifyRequest, id: string, from: 'draft' | 'open', attempted: string
): Promise<void> {
  const status = await lockInvoiceStatus(request.db, id)
  if (status === undefined) throw notFound('invoice')
  if (status !== from) {
    throw conflict(`a ${status} invoice cannot be ${attempted}; only ${from} invoices can`, 'invalid-transition')
  }
}

const invoices: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    schema: {
      summary: 'Create a draft invoice',
      operationId: 'createInvoice',
      description: 'amount_cents is computed by the server. A customer_id that is not one of your customers is a 422 ' +
        'and nothing is written.',
      tags,
      body: CreateInvoiceSchema,
      response: { 201: Ref(InvoiceSchema, 'the draft invoice, priced'), ...problems(...errors, 409, 422) },
    },
  }, async (request, reply) => {
    const priced = priceLines(request.body.lines)
    const id = newId()
    // The statements leave at once (the connection pipelines them); the invoice's goes first, so
    // its failure (an unknown customer: 422) is the one reported (inSendOrder), and the audit and event
    // inserts behind it fail with the aborted transaction. The event's state is rendered by the database
    // from the invoice row written just before it (invoiceStateSql, the mapping toInvoice makes).
    const [row] = await inSendOrder(
      insertInvoice(request.db, {
        id,
        customer_id: request.body.customer_id,
        currency: request.body.currency,
        amount_cents: priced.amount_cents,
        due_date: request.body.due_date ?? null,
        memo: request.body.memo ?? null,
      }, priced.lines),
      audit(request, 'invoice.created', { type: 'invoice', id },
        { amount_cents: priced.amount_cents, currency: request.body.currency }, invoiceStateSql(request.tenant!, id))
    )
    return reply.code(201).send(toInvoice(row))
  })

  fastify.get('/', {
    config: { singleQuery: true },
    schema: {
      summary: 'List invoices, newest first',
      operationId: 'listInvoices',
      tags,
      querystring: InvoiceListQuerySchema,
      response: { 200: Ref(InvoicePage, 'a page of invoices with their lines, newest first'), ...problems(...errors) },
    },
  }, async (request, reply) => {
    // The database renders the page (INVOICE_SQL_FIELDS mirrors toInvoice field by field, and a
    // test holds both to the same JSON): a page is up to 200 invoices with their lines, and parsing,
    // mapping and serialising them again here cost most of the route's CPU.
    const page = await listInvoicePage(request.db, {
      limit: request.query.limit,
      before: decodeCursor(request.query.cursor),
      status: request.query.status,
      customerId: request.query.customer_id,
    })
    const next = page.more && page.lastId !== null ? JSON.stringify(encodeCursor(page.lastId)) : 'null'
    // Already JSON in InvoicePage's shape: a string is sent as it is (the type provider expects the object).
    return reply.type('application/json; charset=utf-8').send(`{"data":${page.data},"next_cursor":${next}}` as never)
  })

  fastify.get('/:id', {
    config: { singleQuery: true },
    schema: {
      summary: 'Retrieve an invoice with its lines',
      operationId: 'getInvoice',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(InvoiceSchema, 'the invoice'), ...problems(...errors, 404) },
    },
  }, async (request) => {
    const row = await findInvoice(request.db, request.params.id)
    if (row === undefined) throw notFound('invoice')
    return toInvoice(row)
  })

  fastify.patch('/:id', {
    schema: {
      summary: 'Edit a draft invoice',
      operationId: 'updateInvoice',
      description: 'Only drafts can be edited (409 otherwise). lines, when given, replace all lines.',
      tags,
      params: IdParamsSchema,
      body: UpdateInvoiceSchema,
      response: { 200: Ref(InvoiceSchema, 'the draft as edited, priced again'), ...problems(...errors, 404, 409, 422) },
    },
  }, async (request) => {
    const { id } = request.params
    await requireStatus(request, id, 'draft', 'edited')
    const { lines, ...fields } = request.body
    const priced = lines === undefined ? undefined : priceLines(lines)
    const row = await updateInvoice(request.db, id, {
      ...fields,
      ...(priced !== undefined && { amount_cents: priced.amount_cents }),
    }, { lines: priced?.lines })
    const invoice = toInvoice(row)
    await audit(request, 'invoice.updated', { type: 'invoice', id }, { fields: Object.keys(request.body).sort() },
      invoice)
    return invoice
  })

  const transition = (
    path: string, summary: string, from: 'draft' | 'open', verb: string,
    apply: (request: FastifyRequest, id: string) => Promise<InvoiceRow>
  ): void => {
    fastify.post(`/:id/${path}`, {
      schema: {
        summary,
        operationId: `${path}Invoice`,
        tags,
        params: IdParamsSchema,
        response: { 200: Ref(InvoiceSchema, `the invoice, ${verb}`), ...problems(...errors, 404, 409) },
      },
    }, async (request) => {
      const { id } = request.params
      await requireStatus(request, id, from, verb)
      const row = await apply(request, id)
      const invoice = toInvoice(row)
      await audit(request, `invoice.${verb}`, { type: 'invoice', id },
        { status: row.status, ...(row.number !== null && { number: row.number }) }, invoice)
      return invoice
    })
  }

  transition('finalize', 'Finalize a draft: it becomes open and gets the next gap-free number', 'draft', 'finalized',
    async (request, id) => {
      const number = formatInvoiceNumber(await nextInvoiceNumber(request.db))
      return updateInvoice(request.db, id, { status: 'open', number }, { stamp: 'finalized_at' })
    })
  transition('pay', 'Mark an open invoice paid', 'open', 'paid', async (request, id) =>
    updateInvoice(request.db, id, { status: 'paid' }, { stamp: 'paid_at' }))
  transition('void', 'Void an open invoice', 'open', 'voided', async (request, id) =>
    updateInvoice(request.db, id, { status: 'void' }, { stamp: 'voided_at' }))
}

export default invoices
