import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'
import ajvFormats from 'ajv-formats'
import ajvKeywords from 'ajv-keywords'
import type { FastifyBodyParser, FastifyRequest, FastifySchemaCompiler, FastifyServerOptions } from 'fastify'
import { badRequest } from './errors.ts'

/**
 * Two Ajv instances, because the API (docs/api.md) has two rules: JSON bodies are typed strictly ("5", true or
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

/** Finds a shared schema (registered with addSchema) by the `$ref` that names it. */
export type SchemaLookup = (ref: string) => unknown

/**
 * The size limits of a schema and nothing else: maxItems, maxLength and maxProperties, through
 * properties, items, combinators and references to shared schemas. An object closed to unknown
 * properties may hold only a few more keys than it declares. Checked first, with the first failure
 * ending the check, these bound the work of the full validation that follows, whatever the body: no
 * keyword runs over an array, a string or an object longer than the schema allows.
 */
export function sizeLimits (
  schema: unknown, lookup: SchemaLookup = () => undefined, seen = new Set<string>()
): unknown {
  if (typeof schema !== 'object' || schema === null) return true
  const source = schema as Record<string, unknown>
  // A reference brings the limits of what it names (a recursive one is followed once).
  if (typeof source.$ref === 'string' && !seen.has(source.$ref)) {
    const target = lookup(source.$ref)
    if (target !== undefined) return sizeLimits(target, lookup, new Set([...seen, source.$ref]))
  }
  const limits: Record<string, unknown> = {}
  const nested = (value: unknown): unknown => sizeLimits(value, lookup, seen)
  for (const keyword of SIZE_KEYWORDS) if (keyword in source) limits[keyword] = source[keyword]
  const map = (value: unknown): Record<string, unknown> =>
    Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, nested(v)]))
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
  if (typeof source.additionalProperties === 'object') limits.additionalProperties = nested(source.additionalProperties)
  if (Array.isArray(source.items)) limits.items = source.items.map(nested)
  else if (source.items !== undefined) limits.items = nested(source.items)
  // oneOf becomes anyOf: size limits alone may fit several branches, which oneOf would refuse.
  const branches = [source.anyOf, source.oneOf].filter(Array.isArray).flat()
  if (branches.length > 0) limits.anyOf = branches.map(nested)
  if (Array.isArray(source.allOf)) limits.allOf = source.allOf.map(nested)
  return limits
}

// The size checks compile in the first-error instance: the same options, and no schema of their own to clash.
interface Validators { firstError: Ajv, allErrors: Ajv }
interface ValidatorSet { schemas: Map<string, unknown>, body: Validators, text: Validators }

/**
 * The shared schemas of a Fastify context (every addSchema of it and of its parents) reach all four
 * instances, so a `$ref` resolves in bodies and in query strings alike. Fastify asks once per context
 * that adds schemas, and every app a process builds (the tests build many) has the same ones: the
 * instances are kept per set of schemas, and Ajv keeps each compiled schema, as before.
 */
const validatorSets: ValidatorSet[] = []

function validatorsFor (external: Record<string, unknown>): ValidatorSet {
  const schemas = new Map(Object.entries(external))
  const same = (set: ValidatorSet): boolean =>
    set.schemas.size === schemas.size && [...schemas].every(([id, schema]) => set.schemas.get(id) === schema)
  const known = validatorSets.find(same)
  if (known !== undefined) return known
  const make = (coerceTypes: boolean | 'array'): Validators => {
    const validators = { firstError: makeAjv(coerceTypes, false), allErrors: makeAjv(coerceTypes, true) }
    for (const [id, schema] of schemas) {
      for (const ajv of [validators.firstError, validators.allErrors]) {
        ajv.addSchema(schema as object, (schema as { $id?: unknown }).$id === undefined ? id : undefined)
      }
    }
    return validators
  }
  const set = { schemas, body: make(false), text: make('array') }
  validatorSets.push(set)
  return set
}

/**
 * Fastify's validator factory (schemaController.compilersFactory.buildValidator in src/app.ts).
 * A valid request costs one pass that stops at the first problem. An invalid one then has its sizes
 * checked (a body past a limit is answered with that one problem), and only a body within every
 * limit is validated again to list all its problems, of which there can then only be a bounded number.
 */
export function buildValidator (external: Record<string, unknown> = {}): FastifySchemaCompiler<unknown> {
  const set = validatorsFor(external)
  const lookup: SchemaLookup = (ref) => set.schemas.get(ref.replace(/#$/, ''))
  return ({ schema, httpPart }) => {
    const ajv = httpPart === 'body' ? set.body : set.text
    const firstError = ajv.firstError.compile(schema as object)
    // Compiled on the first invalid request only: start-up compiles one validator per schema, as before.
    let sizes: ValidateFunction | undefined
    let allErrors: ValidateFunction | undefined
    const validate = (data: unknown): boolean => {
      validate.errors = null
      if (firstError(data)) return true
      sizes ??= ajv.firstError.compile(sizeLimits(schema, lookup) as object)
      allErrors ??= ajv.allErrors.compile(schema as object)
      const failed = sizes(data) ? allErrors(data) ? firstError : allErrors : sizes
      validate.errors = failed.errors ?? firstError.errors ?? null
      return false
    }
    validate.errors = null as ErrorObject[] | null
    return validate as unknown as ValidateFunction
  }
}

type ValidatorFactory = NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>
/** buildValidator as Fastify's option takes it (whose type describes Ajv's compile, not the call Fastify makes). */
export const validatorFactory = buildValidator as unknown as ValidatorFactory['buildValidator']

/**
 * An operation that declares no body takes none: `{}` (or nothing) is accepted, as clients that send
 * JSON on every request do, and anything else is a 400. Unvalidated input never reaches a handler or
 * the hooks that read bodies (the idempotency fingerprint), whatever its size or depth. (An unknown
 * route is a 404 whatever its body.)
 */
export async function refuseUndeclaredBody (request: FastifyRequest): Promise<void> {
  if (request.is404 || request.routeOptions.schema?.body !== undefined) return
  if (request.body === undefined || request.body === null) return
  const body = request.body
  if (typeof body === 'object' && !Array.isArray(body) && Object.keys(body).length === 0) return
  throw badRequest('this operation takes no request body', [{ path: 'body', message: 'must be empty or {}' }])
}

type ParserDone = (error: Error | null, body?: unknown) => void

/**
 * The JSON parser, except that an empty body is no body where none is needed: clients that send
 * `content-type: application/json` on every request (finalize, DELETE, accept) would otherwise get a
 * 400 for a body they never meant to send. On an operation whose body has no required property an empty
 * body is `{}`; one that needs a body still gets Fastify's 400 for an empty one. `json` is Fastify's
 * own parser (proto-poisoning checks kept).
 */
export function emptyJsonAsNoBody (json: FastifyBodyParser<string>): FastifyBodyParser<string> {
  const parse = json as (request: FastifyRequest, body: string, done: ParserDone) => void
  return (request: FastifyRequest, body: string, done: ParserDone): void => {
    if (body.length === 0) {
      const declared = request.routeOptions.schema?.body as
        { type?: unknown, required?: unknown[], minProperties?: number } | undefined
      if (declared === undefined) {
        done(null, undefined)
        return
      }
      if (declared.type === 'object' && (declared.required ?? []).length === 0 &&
        (declared.minProperties ?? 0) === 0) {
        done(null, {})
        return
      }
    }
    parse(request, body, done)
  }
}
