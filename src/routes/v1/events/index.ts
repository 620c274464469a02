import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { conflict, notFound } from '../../../errors.ts'
import { newId } from '../../../ids.ts'
import { toEvent } from '../../../mappers/events.ts'
import { toWebhookDelivery } from '../../../mappers/webhooks.ts'
import { findEvent, listEvents } from '../../../repositories/events.ts'
import {
  enqueueDelivery, findWebhookEndpoint, insertDelivery, subscribedEndpoints,
} from '../../../repositories/webhook-endpoints.ts'
import { IdParamsSchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import { EventListQuerySchema, EventPage, EventSchema } from '../../../schemas/events.ts'
import { RedeliverSchema, RedeliveryResultSchema } from '../../../schemas/webhooks.ts'

const tags = ['events']
const errors = [400, 401, 403, 503]

/**
 * Events about API keys, members, webhook endpoints and exports carry what /v1/api-keys,
 * /v1/members, /v1/webhook-endpoints and /v1/exports show to the admin scope only (names, prefixes,
 * scopes, roles, URLs): a credential without it does not see them, here either.
 */
const ADMIN_RESOURCES = ['api_key', 'member', 'webhook_endpoint', 'export'] as const
const hiddenResources = (request: FastifyRequest): readonly string[] =>
  request.tenant!.scopes.includes('admin') ? [] : ADMIN_RESOURCES

const ADMIN_NOTE = 'Events about API keys, members, webhook endpoints and exports (api_key.*, member.*, ' +
  'webhook_endpoint.*, export.*) are shown only to credentials with the admin scope, as /v1/api-keys, /v1/members, ' +
  '/v1/webhook-endpoints and /v1/exports are.'

const events: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/', {
    config: { singleQuery: true },
    schema: {
      summary: "List the tenant's events, newest first",
      operationId: 'listEvents',
      description: 'Every change to your customers, invoices, API keys and members, written in the same transaction ' +
        `as the change, kept for the retention period (30 days by default). ${ADMIN_NOTE}`,
      tags,
      querystring: EventListQuerySchema,
      response: { 200: Ref(EventPage, 'a page of events, newest first'), ...problems(...errors) },
    },
  }, async (request) => {
    const { type, created_after: createdAfter, created_before: createdBefore } = request.query
    const hidden = hiddenResources(request)
    return paginate(request.query,
      (page) => listEvents(request.db, { ...page, type, createdAfter, createdBefore, hiddenResources: hidden }),
      toEvent)
  })

  fastify.get('/:id', {
    config: { singleQuery: true },
    schema: {
      summary: 'Retrieve an event',
      operationId: 'getEvent',
      description: ADMIN_NOTE,
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(EventSchema, 'the event'), ...problems(...errors, 404) },
    },
  }, async (request) => {
    const row = await findEvent(request.db, request.params.id)
    if (row === undefined || hiddenResources(request).includes(row.resource_type)) throw notFound('event')
    return toEvent(row)
  })

  fastify.post('/:id/redeliver', {
    config: { scope: 'admin' },
    // The body is optional: no body at all means {} (to every subscribed endpoint).
    preValidation: async (request) => { request.body ??= {} },
    schema: {
      summary: 'Send an event to webhook endpoints again',
      operationId: 'redeliverEvent',
      description: 'Queues a new delivery of the event, with the same webhook-id (the event id): to `endpoint_id`, ' +
        'or without it to every enabled endpoint subscribed to the event type (none: an empty list). A disabled ' +
        'endpoint is a 409: enable it first.',
      tags,
      params: IdParamsSchema,
      body: RedeliverSchema,
      response: {
        202: Ref(RedeliveryResultSchema, 'the deliveries queued'),
        ...problems(...errors, 404, 409),
      },
    },
  }, async (request, reply) => {
    const event = await findEvent(request.db, request.params.id)
    if (event === undefined) throw notFound('event')
    const endpointId = request.body.endpoint_id
    let endpoints
    if (endpointId === undefined) {
      endpoints = await subscribedEndpoints(request.db, event.type)
    } else {
      const endpoint = await findWebhookEndpoint(request.db, endpointId)
      if (endpoint === undefined) throw notFound('webhook endpoint')
      if (endpoint.status !== 'enabled') throw conflict('the webhook endpoint is disabled', 'endpoint-disabled')
      endpoints = [endpoint]
    }
    const deliveries = []
    for (const endpoint of endpoints) {
      const row = await insertDelivery(request.db, {
        id: newId(), endpoint_id: endpoint.id, event_id: event.id, event_type: event.type,
      })
      await enqueueDelivery(request.db, row.id)
      deliveries.push(toWebhookDelivery(row, []))
    }
    return reply.code(202).send({ data: deliveries })
  })
}

export default events
