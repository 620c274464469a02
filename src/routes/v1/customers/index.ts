import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { newId } from '../../../ids.ts'
import { audit } from '../../../audit.ts'
import { notFound } from '../../../errors.ts'
import { toCustomer } from '../../../mappers/customers.ts'
import {
  deleteCustomer, findCustomer, insertCustomer, listCustomers, updateCustomer,
} from '../../../repositories/customers.ts'
import { IdParamsSchema, PageQuerySchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import { CreateCustomerSchema, CustomerPage, CustomerSchema, UpdateCustomerSchema } from '../../../schemas/customers.ts'

const tags = ['customers']
const tenantErrors = [400, 401, 403, 503]

const customers: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    schema: {
      summary: 'Create a customer',
      operationId: 'createCustomer',
      tags,
      body: CreateCustomerSchema,
      response: { 201: Ref(CustomerSchema, 'the customer created'), ...problems(...tenantErrors, 409) },
    },
  }, async (request, reply) => {
    const row = await insertCustomer(request.db, {
      id: newId(),
      name: request.body.name,
      email: request.body.email ?? null,
      external_ref: request.body.external_ref ?? null,
    })
    const customer = toCustomer(row)
    await audit(request, 'customer.created', { type: 'customer', id: row.id }, {}, customer)
    return reply.code(201).send(customer)
  })

  fastify.get('/', {
    config: { singleQuery: true },
    schema: {
      summary: 'List customers, newest first',
      operationId: 'listCustomers',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(CustomerPage, 'a page of customers, newest first'), ...problems(...tenantErrors) },
    },
  }, async (request) => paginate(request.query, (page) => listCustomers(request.db, page), toCustomer))

  fastify.get('/:id', {
    config: { singleQuery: true },
    schema: {
      summary: 'Retrieve a customer',
      operationId: 'getCustomer',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(CustomerSchema, 'the customer'), ...problems(...tenantErrors, 404) },
    },
  }, async (request) => {
    const row = await findCustomer(request.db, request.params.id)
    if (row === undefined) throw notFound('customer')
    return toCustomer(row)
  })

  fastify.patch('/:id', {
    schema: {
      summary: 'Update a customer',
      operationId: 'updateCustomer',
      tags,
      params: IdParamsSchema,
      body: UpdateCustomerSchema,
      response: { 200: Ref(CustomerSchema, 'the customer as updated'), ...problems(...tenantErrors, 404, 409) },
    },
  }, async (request) => {
    const row = await updateCustomer(request.db, request.params.id, request.body)
    if (row === undefined) throw notFound('customer')
    const customer = toCustomer(row)
    await audit(request, 'customer.updated', { type: 'customer', id: row.id },
      { fields: Object.keys(request.body).sort() }, customer)
    return customer
  })

  fastify.delete('/:id', {
    schema: {
      summary: 'Delete a customer',
      operationId: 'deleteCustomer',
      description: 'Refused with 409 while invoices reference the customer.',
      tags,
      params: IdParamsSchema,
      response: { 204: { type: 'null', description: 'deleted' }, ...problems(...tenantErrors, 404, 409) },
    },
  }, async (request, reply) => {
    if (!await deleteCustomer(request.db, request.params.id)) throw notFound('customer')
    await audit(request, 'customer.deleted', { type: 'customer', id: request.params.id }, {}, { id: request.params.id })
    return reply.code(204).send()
  })
}

export default customers
