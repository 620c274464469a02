import { Type, type Static, type StringOptions, type TSchema, type TUnsafe } from '@sinclair/typebox'
import { badRequest } from '../errors.ts'

/**
 * No NUL (U+0000) anywhere: PostgreSQL text cannot hold it (error 22021), so a client's NUL would
 * otherwise reach the database and fail there. Every schema that accepts free text from a client
 * (body, path, query) builds it with Text().
 */
export const NO_NUL_PATTERN = '^[^\\u0000]*$'

/**
 * A string a client sends: free text, never a NUL byte. Options with a pattern of their own must exclude
 * NUL themselves.
 */
export const Text = (options: StringOptions = {}) => Type.String({ pattern: NO_NUL_PATTERN, ...options })

/** True when a string holds a NUL byte (for text that does not pass through a schema, e.g. JWT claims). */
export const hasNul = (value: string): boolean => value.includes('\u0000')

/**
 * An id as it enters the API: any case on input, lower case from then on (ajv-keywords' transform runs
 * during validation), so every comparison after it compares one canonical value.
 */
export const Uuid = Type.String({
  format: 'uuid',
  maxLength: 36,
  transform: ['toLowerCase'],
  description: 'UUID (time-ordered v7 for ids the server assigns)',
})
export const Timestamp = Type.String({ format: 'date-time', description: 'ISO 8601 UTC timestamp' })

export const IdParamsSchema = Type.Object({ id: Uuid }, { additionalProperties: false })

/**
 * A reference to a shared schema (one with an `$id`, registered with addSchema: see ./shared.ts), typed
 * as that schema. The document names it once in components.schemas; validation and serialization
 * resolve it by its `$id`. The description says what it is in this place (a response's meaning).
 */
export function Ref<T extends TSchema> (schema: T, description?: string): TUnsafe<Static<T>> {
  if (schema.$id === undefined) throw new Error('Ref() needs a schema with an $id')
  return Type.Unsafe<Static<T>>(Type.Ref(schema.$id, description === undefined ? {} : { description }))
}

// limit is required in the type (validation fills in the default), not of the client: the OpenAPI
// transform (src/plugins/external/swagger.ts) documents every parameter with a default as optional.
export const PageQuerySchema = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50, description: 'page size' }),
  cursor: Type.Optional(Text({ minLength: 1, maxLength: 200, description: 'opaque cursor from next_cursor' })),
}, { additionalProperties: false })
export type PageQuery = Static<typeof PageQuerySchema>

/** A list envelope, shared as `<Item>Page`: a page of items, newest first, and the cursor of the next. */
export const Page = <T extends TSchema>(item: T) => {
  const $id = `${item.$id ?? ''}Page`
  return Type.Object({
    data: Type.Array(Ref(item)),
    next_cursor: Type.Union([Type.String(), Type.Null()], {
      description: 'pass as ?cursor= for the next page; null on the last page',
    }),
  }, { $id, title: $id, description: `a page of ${item.$id ?? ''} objects, newest first` })
}

export const FieldError = Type.Object({ path: Type.String(), message: Type.String() })

export const ProblemSchema = Type.Object({
  type: Type.String({ format: 'uri' }),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.Optional(Type.String()),
  instance: Type.Optional(Type.String()),
  errors: Type.Optional(Type.Array(FieldError)),
  // quota-exceeded problems (docs/limits.md): which quota, its limit, the use before the refused write,
  // and when it resets (null for quotas of live objects, which do not).
  quota: Type.Optional(Type.String({ description: 'quota-exceeded: the quota that is used up' })),
  limit: Type.Optional(Type.Integer({ description: 'quota-exceeded: the quota' })),
  used: Type.Optional(Type.Integer({ description: 'quota-exceeded: what was used before this write' })),
  resets_at: Type.Optional(Type.Union([Type.String({ format: 'date-time' }), Type.Null()], {
    description: 'quota-exceeded: when the quota resets; null when it does not (live objects)',
  })),
}, { $id: 'Problem', title: 'Problem', description: 'RFC 9457 problem details (application/problem+json)' })
export type Problem = Static<typeof ProblemSchema>

const PROBLEM_DESCRIPTIONS: Record<number, string> = {
  400: 'the body, query or a header is invalid',
  401: 'missing, malformed, expired or revoked credential',
  403: 'valid credential, but the wrong tenant, no membership or a missing scope; or a quota is used up ' +
    '(type quota-exceeded)',
  404: 'no such resource in your tenant',
  409: 'the request conflicts with the current state',
  422: 'the body is well-formed but cannot be applied (e.g. a reference that does not resolve in your tenant)',
  429: 'too many requests: the tenant\'s rate or its share of the database, or failed authentications from your ' +
    'address; retry after retry-after seconds (docs: limits)',
  500: 'the server could not complete the operation (the description of the operation says when)',
  503: 'the database is unavailable; retry after retry-after seconds',
}

interface ProblemResponse {
  description: string
  content: { 'application/problem+json': { schema: TUnsafe<Problem> } }
}

/**
 * Error responses for a route: problem+json, documented per status. A route that takes a credential (it
 * lists 401) may also answer 429: its tenant's rate or share, or its address's failed authentications.
 */
export function problems (...statuses: number[]): Record<number, ProblemResponse> {
  const all = statuses.includes(401) && !statuses.includes(429) ? [...statuses, 429] : statuses
  return Object.fromEntries(all.map((s) => {
    const description = PROBLEM_DESCRIPTIONS[s]
    if (description === undefined) throw new Error(`no description for a ${s} problem`)
    return [s, { description, content: { 'application/problem+json': { schema: Ref(ProblemSchema) } } }]
  }))
}

// Cursors are opaque to clients: base64url of a versioned marker and the last id of the page.
// Anything that does not decode to exactly that shape is a 400, never a database error.
const CURSOR = /^c1:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/

export function encodeCursor (id: string): string {
  return Buffer.from(`c1:${id}`).toString('base64url')
}

export function decodeCursor (cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined
  const match = CURSOR.exec(Buffer.from(cursor, 'base64url').toString('utf8'))
  if (match === null) {
    throw badRequest('the cursor is invalid',
      [{ path: 'querystring/cursor', message: 'is not a cursor returned by this API' }])
  }
  return match[1]
}

/** Fetches limit + 1 rows so the presence of a next page is known without a second query. */
export async function paginate<R extends { id: string }, T> (
  query: PageQuery,
  fetch: (page: { limit: number, before: string | undefined }) => Promise<R[]>,
  map: (row: R) => T
): Promise<{ data: T[], next_cursor: string | null }> {
  const rows = await fetch({ limit: query.limit + 1, before: decodeCursor(query.cursor) })
  const more = rows.length > query.limit
  const pageRows = more ? rows.slice(0, query.limit) : rows
  return { data: pageRows.map(map), next_cursor: more ? encodeCursor(pageRows.at(-1)!.id) : null }
}
