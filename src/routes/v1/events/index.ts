import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { notFound } from '../../../errors.ts'
import { toEvent } from '../../../mappers/events.ts'
import { findEvent, listEvents } from '../../../repositories/events.ts'
import { IdParamsSchema, paginate, problems, Ref } from '../../../schemas/common.ts'
import { EventListQuerySchema, EventPage, EventSchema } from '../../../schemas/events.ts'

const tags = ['events']
const errors = [400, 401, 403, 503]

/**
 * Events about API keys and members carry what /v1/api-keys and /v1/members show to the admin scope
 * only (names, prefixes, scopes, roles): a credential without it does not see them, here either.
 */
const ADMIN_RESOURCES = ['api_key', 'member'] as const
const hiddenResources = (request: FastifyRequest): readonly string[] =>
  request.tenant!.scopes.includes('admin') ? [] : ADMIN_RESOURCES

const ADMIN_NOTE = 'Events about API keys and members (api_key.*, member.*) are shown only to credentials with the ' +
  'admin scope, as /v1/api-keys and /v1/members are.'

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
}

export default events
