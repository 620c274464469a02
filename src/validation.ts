import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'
import ajvFormats from 'ajv-formats'
import ajvKeywords from 'ajv-keywords'
import type { FastifyRequest, FastifySchemaCompiler } from 'fastify'
import { badRequest } from './errors.ts'

/**
 * Two Ajv instances, because API.md wants two rules: JSON bodies are typed strictly ("5", true or
 * null where an integer is expected is a 400), while query strings, params and headers are text
 * and get parsed into their declared types. Unknown body properties are rejected, never dropped
 * silently and never stored. `transform` (ajv-keywords) makes ids canonical as they enter.
 */
function makeAjv (coerceTypes: boolean | 'array', allErrors: boolean): Ajv {
  const ajv = new Ajv({ coerceTypes, useDefaults: true, removeAdditional: false, allErrors, strict: false })
  // Both packages are CommonJS: under NodeNext their default import is module.exports, whose .default is the plugin.
  ajvFormats.default(ajv)
  ajvKeywords.default(ajv, ['transform'])
  return ajv
}

const SIZE_KEYWORDS = ['maxItems', 'maxLength', 'maxProperties'] as const
/** Unknown properties listed one by one before the size check refuses an object outright. */
const UNKNOWN_PROPERTIES_LISTED = 16

/**
 * The size limits of a schema and nothing else: maxItems, maxLength and maxProperties, through
 * properties, items and combinators. An object closed to unknown properties may hold only a few
 * more keys than it declares. Checked first, with the first failure ending the check, these bound
 * the work of the full validation that follows, whatever the body: no keyword runs over an array,
 * a string or an object longer than the schema allows.
 */
export function sizeLimits (schema: unknown): unknown {
  if (typeof schema !== 'object' || schema === null) return true
  const source = schema as Record<string, unknown>
  const limits: Record<string, unknown> = {}
  for (const keyword of SIZE_KEYWORDS) if (keyword in source) limits[keyword] = source[keyword]
  const map = (value: unknown): Record<string, unknown> =>
    Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, sizeLimits(v)]))
  if (typeof source.properties === 'object' && source.properties !== null) {
    limits.properties = map(source.properties)
    if (source.additionalProperties === false) {
      const allowed = Object.keys(source.properties).length + UNKNOWN_PROPERTIES_LISTED
      limits.maxProperties = Math.min(allowed, Number(limits.maxProperties ?? allowed))
    }
  }
  if (typeof source.patternProperties === 'object' && source.patternProperties !== null) {
    limits.patternProperties = map(source.patternProperties)
  }
  if (typeof source.additionalProperties === 'object') limits.additionalProperties = sizeLimits(source.additionalProperties)
  if (Array.isArray(source.items)) limits.items = source.items.map(sizeLimits)
  else if (source.items !== undefined) limits.items = sizeLimits(source.items)
  // oneOf becomes anyOf: size limits alone may fit several branches, which oneOf would refuse.
  const branches = [source.anyOf, source.oneOf].filter(Array.isArray).flat()
  if (branches.length > 0) limits.anyOf = branches.map(sizeLimits)
  if (Array.isArray(source.allOf)) limits.allOf = source.allOf.map(sizeLimits)
  return limits
}

// The size checks compile in the first-error instance: the same options, and no schema of their own to clash.
interface Validators { firstError: Ajv, allErrors: Ajv }
const body: Validators = { firstError: makeAjv(false, false), allErrors: makeAjv(false, true) }
const text: Validators = { firstError: makeAjv('array', false), allErrors: makeAjv('array', true) }

/**
 * A valid request costs one pass that stops at the first problem. An invalid one then has its sizes
 * checked (a body past a limit is answered with that one problem), and only a body within every
 * limit is validated again to list all its problems, of which there can then only be a bounded number.
 */
export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  const ajv = httpPart === 'body' ? body : text
  const firstError = ajv.firstError.compile(schema as object)
  // Compiled on the first invalid request only: start-up compiles one validator per schema, as before.
  let sizes: ValidateFunction | undefined
  let allErrors: ValidateFunction | undefined
  const validate = (data: unknown): boolean => {
    validate.errors = null
    if (firstError(data)) return true
    sizes ??= ajv.firstError.compile(sizeLimits(schema) as object)
    allErrors ??= ajv.allErrors.compile(schema as object)
    const failed = sizes(data) ? allErrors(data) ? firstError : allErrors : sizes
    validate.errors = failed.errors ?? firstError.errors ?? null
    return false
  }
  validate.errors = null as ErrorObject[] | null
  return validate as unknown as ValidateFunction
}

/**
 * An operation that declares no body takes none: `{}` (or nothing) is accepted, as clients that send
 * JSON on every request do, and anything else is a 400. Unvalidated input never reaches a handler or
 * the hooks that read bodies (the idempotency fingerprint), whatever its size or depth. (An unknown
 * route is a 404 whatever its body.)
 */
export async function refuseUndeclaredBody (request: FastifyRequest): Promise<void> {
  if (request.is404 || request.routeOptions.schema?.body !== undefined || request.body === undefined || request.body === null) return
  const body = request.body
  if (typeof body === 'object' && !Array.isArray(body) && Object.keys(body).length === 0) return
  throw badRequest('this operation takes no request body', [{ path: 'body', message: 'must be empty or {}' }])
}
