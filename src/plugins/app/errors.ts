import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { problemFromDatabaseError } from '../../db/errors.ts'
import { HttpProblem, PROBLEM_BASE, PROBLEM_CONTENT_TYPE, type FieldError } from '../../errors.ts'
import { NO_NUL_PATTERN } from '../../schemas/common.ts'

/**
 * One error handler and one not-found handler for the whole app: every error leaves as
 * application/problem+json. Anything unexpected is logged with its stack and answered with a
 * generic 500 that carries only the request id.
 */

interface ValidationItem {
  instancePath: string
  keyword: string
  message?: string
  params: Record<string, unknown>
}

const QUOTA_EXCEEDED = `${PROBLEM_BASE}quota-exceeded`

/** A response lists this many problems at most (and says how many there were): its size stays bounded. */
export const LISTED_PROBLEMS = 10

function fieldErrors (context: string | undefined, validation: ValidationItem[]): FieldError[] {
  const part = context ?? 'body'
  return validation.slice(0, LISTED_PROBLEMS).map((v) => {
    let path = v.instancePath
    if (v.keyword === 'required' && typeof v.params.missingProperty === 'string') path += `/${v.params.missingProperty}`
    if (v.keyword === 'additionalProperties' && typeof v.params.additionalProperty === 'string') {
      path += `/${v.params.additionalProperty}`
      return { path: `${part}${path}`, message: 'is not a known property' }
    }
    if (v.keyword === 'pattern' && v.params.pattern === NO_NUL_PATTERN) {
      return { path: `${part}${path}`, message: 'must not contain a NUL character' }
    }
    return { path: `${part}${path}`, message: v.message ?? `fails ${v.keyword}` }
  })
}

/** What the client did wrong, for the errors Fastify raises itself; never Fastify's code or internal names. */
const FASTIFY_DETAILS: Record<string, string> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'send the body as application/json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'the request body is too large',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'the JSON body is empty',
  FST_ERR_CTP_INVALID_JSON_BODY: 'the body is not valid JSON',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'the content-length does not match the body',
  FST_ERR_BAD_URL: 'the URL is malformed (invalid percent-encoding)',
  FST_ERR_MAX_PARAM_LENGTH: 'a path segment of the URL is too long',
}

/** Errors Fastify raises before a handler runs, with a status chosen by Fastify (400, 404, 413, 414, 415...). */
function problemFromFastifyError (error: FastifyError): HttpProblem | undefined {
  if (error.validation !== undefined) {
    const validation = error.validation as ValidationItem[]
    const errors = fieldErrors(error.validationContext, validation)
    const detail = validation.length > errors.length
      ? `the request is invalid: ${validation.length} problems, the first ${errors.length} listed`
      : 'the request is invalid'
    return new HttpProblem(400, { slug: 'validation', title: 'Validation Failed', detail, errors })
  }
  const status = error.statusCode
  const fastifyCode = typeof error.code === 'string' && error.code.startsWith('FST_')
  if (typeof status !== 'number' || status < 400 || status >= 500 || !fastifyCode) {
    return undefined
  }
  // Fastify's own messages for 4xx describe the client's request, not our internals (e.g. JSON syntax errors).
  return new HttpProblem(status, { detail: FASTIFY_DETAILS[error.code] ?? error.message })
}

/** The instance a problem names: the request's path, cut short, so that a long URL is not echoed back whole. */
const INSTANCE_MAX = 1024

function send (reply: FastifyReply, problem: HttpProblem, request: FastifyRequest): FastifyReply {
  const path = request.url.split('?')[0]!
  return reply
    .code(problem.status)
    .headers(problem.headers)
    .type(PROBLEM_CONTENT_TYPE)
    .send(problem.toJSON(path.length > INSTANCE_MAX ? `${path.slice(0, INSTANCE_MAX)}…` : path))
}

/**
 * Fastify's `frameworkErrors`: errors raised while routing, before any hook or handler runs (a
 * malformed percent-encoding, an over-long path parameter). Answered as problem+json like the rest;
 * the onRequest hooks have not run, so the request id header is set here.
 */
export function frameworkErrors (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const problem = problemFromFastifyError(error) ?? new HttpProblem(400, { detail: 'the request is malformed' })
  reply.header('x-request-id', request.id)
  send(reply, problem, request)
}

const CLIENT_ERRORS: Record<string, [status: number, detail: string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'the request took too long to arrive'],
  HPE_HEADER_OVERFLOW: [431, 'the request headers are too large'],
}

/**
 * Fastify's `clientErrorHandler`: requests Node's HTTP parser refuses before Fastify sees them
 * (malformed request line or headers, headers too large, too slow). Written to the socket as
 * problem+json, then the connection is closed, as Node and Fastify do by default.
 */
export function clientErrorHandler (this: FastifyInstance, error: NodeJS.ErrnoException, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const [status, detail] = CLIENT_ERRORS[error.code ?? ''] ?? [400, 'the request is not valid HTTP']
  this.log.trace({ err: error }, 'client error')
  if (socket.writable) {
    const body = JSON.stringify(new HttpProblem(status, { detail }).toJSON())
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Bad Request'}\r\nConnection: close\r\n` +
      `Content-Type: ${PROBLEM_CONTENT_TYPE}; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  }
  socket.destroy(error)
}

async function errorsPlugin (fastify: FastifyInstance): Promise<void> {
  fastify.setErrorHandler(function (error: FastifyError, request, reply) {
    const problem = error instanceof HttpProblem
      ? error
      : problemFromFastifyError(error) ?? problemFromDatabaseError(error)
    if (problem !== undefined) {
      // (request.tenant is only decorated under /v1: undefined elsewhere.)
      const tenantId = request.tenant?.tenantId
      if (problem.type === QUOTA_EXCEEDED && tenantId !== undefined && fastify.hasDecorator('limitRefusals')) {
        fastify.limitRefusals.record('quota', tenantId)
      }
      if (problem.status >= 500) request.log.warn({ err: error }, `request failed: ${problem.detail ?? problem.title}`)
      return send(reply, problem, request)
    }
    request.log.error({ err: error }, 'unhandled error')
    const detail = `an internal error occurred; quote request id ${request.id} when reporting it`
    return send(reply, new HttpProblem(500, { detail }), request)
  })

  fastify.setNotFoundHandler(function (request, reply) {
    const detail = `no route for ${request.method} ${request.url.split('?')[0]}`
    return send(reply, new HttpProblem(404, { detail }), request)
  })
}

export default fp(errorsPlugin, { name: 'errors' })
