import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { audit } from '../../../audit.ts'
import { HttpProblem, notFound, unprocessable } from '../../../errors.ts'
import { newId } from '../../../ids.ts'
import { toWebhookDelivery, toWebhookEndpoint } from '../../../mappers/webhooks.ts'
import {
  deleteWebhookEndpoint, findWebhookEndpoint, insertWebhookEndpoint, listAttempts, listDeliveries,
  listWebhookEndpoints, rotateWebhookSecret, updateWebhookEndpoint, type WebhookEndpointChanges,
  type WebhookAttemptRow, type WebhookEndpointRow,
} from '../../../repositories/webhook-endpoints.ts'
import { decodeCursor, encodeCursor, IdParamsSchema, PageQuerySchema, paginate, problems, Ref } from
  '../../../schemas/common.ts'
import {
  CreateWebhookEndpointSchema, DeliveryListQuerySchema, UpdateWebhookEndpointSchema, WebhookDeliveryPage,
  WebhookEndpointPage, WebhookEndpointSchema, WebhookEndpointWithSecretSchema,
} from '../../../schemas/webhooks.ts'
import { checkWebhookUrl } from '../../../webhooks/safe-request.ts'
import { parseServerKey, sealSecret } from '../../../webhooks/secret-box.ts'
import type { WebhookSettings } from '../../../webhooks/settings.ts'
import { generateSigningSecret } from '../../../webhooks/signature.ts'

const tags = ['webhooks']
const errors = [400, 401, 403, 503]
// An endpoint's URL, subscriptions and deliveries are the admin's business, like API keys: reads need it too.
const config = { scope: 'admin' as const }
const resource = (id: string) => ({ type: 'webhook_endpoint', id })

export interface WebhookEndpointOptions {
  webhooks: WebhookSettings
}

const webhookEndpoints: FastifyPluginAsyncTypebox<WebhookEndpointOptions> = async (fastify, options) => {
  const settings = options.webhooks
  // Parsed once: a malformed key stops the server at start, not at the first request that needs it.
  const key = settings.secretKey === undefined ? undefined : parseServerKey(settings.secretKey)

  /** A new signing secret and its sealed form, bound to this tenant's endpoint. */
  const newSecret = (request: FastifyRequest, endpointId: string): { secret: string, sealed: string } => {
    if (key === undefined) {
      throw new HttpProblem(503, { detail: 'webhook signing is not configured (WEBHOOK_SECRET_KEY)' })
    }
    const secret = generateSigningSecret()
    return { secret, sealed: sealSecret(key, secret, `${request.tenant!.tenantId}:${endpointId}`) }
  }

  const checkUrl = (url: string): void => {
    const check = checkWebhookUrl(url, { allowPrivate: settings.allowPrivateTargets })
    if (!check.ok) {
      throw unprocessable(`the webhook URL is refused: ${check.reason}`, [{ path: 'body/url', message: check.reason }])
    }
  }

  const found = (row: WebhookEndpointRow | undefined): WebhookEndpointRow => {
    if (row === undefined) throw notFound('webhook endpoint')
    return row
  }

  fastify.post('/', {
    // The response holds the signing secret: a repeated idempotency key is a 409, never a replay.
    config: { ...config, idempotency: 'no-replay' },
    schema: {
      summary: 'Create a webhook endpoint',
      operationId: 'createWebhookEndpoint',
      description: 'The signing secret is returned once, in this response; it is stored encrypted. The URL must ' +
        'be https and must not be a private, loopback or link-local address (422 otherwise).',
      tags,
      body: CreateWebhookEndpointSchema,
      response: {
        201: Ref(WebhookEndpointWithSecretSchema, 'the endpoint, with its signing secret (shown once)'),
        ...problems(...errors, 422),
      },
    },
  }, async (request, reply) => {
    const { url, event_types: eventTypes, description } = request.body
    checkUrl(url)
    const id = newId()
    const { secret, sealed } = newSecret(request, id)
    const row = await insertWebhookEndpoint(request.db, {
      id, url, event_types: eventTypes, description: description ?? '', secret_sealed: sealed,
    })
    const endpoint = toWebhookEndpoint(row)
    await audit(request, 'webhook_endpoint.created', resource(row.id), { url, event_types: eventTypes }, endpoint)
    return reply.code(201).send({ ...endpoint, secret })
  })

  fastify.get('/', {
    config: { ...config, singleQuery: true },
    schema: {
      summary: 'List webhook endpoints, newest first',
      operationId: 'listWebhookEndpoints',
      tags,
      querystring: PageQuerySchema,
      response: { 200: Ref(WebhookEndpointPage, 'a page of endpoints, newest first'), ...problems(...errors) },
    },
  }, async (request) => paginate(request.query, (page) => listWebhookEndpoints(request.db, page), toWebhookEndpoint))

  fastify.get('/:id', {
    config: { ...config, singleQuery: true },
    schema: {
      summary: 'Retrieve a webhook endpoint',
      operationId: 'getWebhookEndpoint',
      tags,
      params: IdParamsSchema,
      response: { 200: Ref(WebhookEndpointSchema, 'the endpoint'), ...problems(...errors, 404) },
    },
  }, async (request) => toWebhookEndpoint(found(await findWebhookEndpoint(request.db, request.params.id))))

  fastify.patch('/:id', {
    config,
    schema: {
      summary: 'Update a webhook endpoint',
      operationId: 'updateWebhookEndpoint',
      description: 'Setting `status` to `enabled` also clears `failing_since` and `disabled_reason`.',
      tags,
      params: IdParamsSchema,
      body: UpdateWebhookEndpointSchema,
      response: { 200: Ref(WebhookEndpointSchema, 'the endpoint as updated'), ...problems(...errors, 404, 422) },
    },
  }, async (request) => {
    const { url, event_types: eventTypes, description, status } = request.body
    if (url !== undefined) checkUrl(url)
    const changes: WebhookEndpointChanges = {
      ...(url !== undefined && { url }),
      ...(eventTypes !== undefined && { event_types: eventTypes }),
      ...(description !== undefined && { description }),
      ...(status !== undefined && { status, disabled_reason: null }),
      ...(status === 'enabled' && { failing_since: null }),
    }
    const row = found(await updateWebhookEndpoint(request.db, request.params.id, changes))
    const endpoint = toWebhookEndpoint(row)
    await audit(request, 'webhook_endpoint.updated', resource(row.id),
      { fields: Object.keys(request.body).sort() }, endpoint)
    return endpoint
  })

  fastify.delete('/:id', {
    config,
    schema: {
      summary: 'Delete a webhook endpoint',
      operationId: 'deleteWebhookEndpoint',
      description: 'Its deliveries and their attempts are deleted with it.',
      tags,
      params: IdParamsSchema,
      response: { 204: { type: 'null', description: 'deleted' }, ...problems(...errors, 404) },
    },
  }, async (request, reply) => {
    const { id } = request.params
    if (!await deleteWebhookEndpoint(request.db, id)) throw notFound('webhook endpoint')
    await audit(request, 'webhook_endpoint.deleted', resource(id), {}, { id })
    return reply.code(204).send()
  })

  fastify.post('/:id/rotate-secret', {
    config: { ...config, idempotency: 'no-replay' },
    schema: {
      summary: "Rotate a webhook endpoint's signing secret",
      operationId: 'rotateWebhookEndpointSecret',
      description: 'The new secret is returned once, in this response. The previous one keeps signing too ' +
        '(deliveries carry both signatures) until `previous_secret_expires_at`, so receivers can switch over.',
      tags,
      params: IdParamsSchema,
      response: {
        200: Ref(WebhookEndpointWithSecretSchema, 'the endpoint, with its new signing secret (shown once)'),
        ...problems(...errors, 404),
      },
    },
  }, async (request) => {
    const { id } = request.params
    const { secret, sealed } = newSecret(request, id)
    const row = found(await rotateWebhookSecret(request.db, id, sealed, settings.secretGraceMs))
    const endpoint = toWebhookEndpoint(row)
    await audit(request, 'webhook_endpoint.secret_rotated', resource(row.id),
      { previous_secret_expires_at: endpoint.previous_secret_expires_at }, endpoint)
    return { ...endpoint, secret }
  })

  fastify.get('/:id/deliveries', {
    config,
    schema: {
      summary: "List a webhook endpoint's deliveries, newest first",
      operationId: 'listWebhookDeliveries',
      description: 'Each delivery with every attempt made: when, the status code, the latency and the start of ' +
        'the response. `?status=` filters.',
      tags,
      params: IdParamsSchema,
      querystring: DeliveryListQuerySchema,
      response: {
        200: Ref(WebhookDeliveryPage, 'a page of deliveries with their attempts, newest first'),
        ...problems(...errors, 404),
      },
    },
  }, async (request) => {
    const endpointId = found(await findWebhookEndpoint(request.db, request.params.id)).id
    const { limit, status } = request.query
    const rows = await listDeliveries(request.db, {
      endpointId, limit: limit + 1, before: decodeCursor(request.query.cursor), status,
    })
    const more = rows.length > limit
    const page = more ? rows.slice(0, limit) : rows
    const attempts = new Map<string, WebhookAttemptRow[]>()
    for (const attempt of await listAttempts(request.db, page.map((row) => row.id))) {
      const list = attempts.get(attempt.delivery_id)
      if (list === undefined) attempts.set(attempt.delivery_id, [attempt])
      else list.push(attempt)
    }
    return {
      data: page.map((row) => toWebhookDelivery(row, attempts.get(row.id) ?? [])),
      next_cursor: more ? encodeCursor(page.at(-1)!.id) : null,
    }
  })
}

export default webhookEndpoints
