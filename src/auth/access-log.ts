import type { FastifyRequest } from 'fastify'
import type { HttpProblem } from '../errors.ts'
import type { TenantCredential } from './credentials.ts'

/** The public part of a credential that a log line may carry: an API key's prefix, or jwt:<sub>; never the secret. */
export function credentialPrefix (credential: TenantCredential | null | undefined): string | undefined {
  if (credential === null || credential === undefined) return undefined
  return credential.kind === 'api_key' ? credential.key.prefix : `jwt:${credential.userId}`
}

/**
 * Logs a refusal as an access decision — `event: "access_denied"` with the request id (from the
 * request's logger), the status, the reason and the credential's public prefix, the same shape as
 * the tenant pipeline's refusals — and returns the problem for the caller to throw. For refusals
 * that routes make themselves (e.g. the owner rule of /v1/members).
 */
export function accessDenied (
  request: FastifyRequest, problem: HttpProblem, reason: string, extra: Record<string, unknown> = {}
): HttpProblem {
  return logDecision(request, problem, reason, credentialPrefix(request.tenantCredential), extra)
}

/**
 * accessDenied for a refused credential (the tenant pipeline's checks, the operator token), with its prefix
 * given: the pipeline refuses some before tenantCredential is set. Unlike a route's refusal of a credential
 * that authenticated, it counts as a failed authentication of the client's address (plugins/app/rate-limit.ts).
 */
export function logAccessDenied (
  request: FastifyRequest, problem: HttpProblem, reason: string, prefix: string | undefined,
  extra: Record<string, unknown> = {}
): HttpProblem {
  request.authenticationFailed = true
  return logDecision(request, problem, reason, prefix, extra)
}

function logDecision (
  request: FastifyRequest, problem: HttpProblem, reason: string, prefix: string | undefined,
  extra: Record<string, unknown>
): HttpProblem {
  const decision = { event: 'access_denied', status: problem.status, reason, credentialPrefix: prefix, ...extra }
  request.log.warn(decision, `access denied: ${reason}`)
  return problem
}
