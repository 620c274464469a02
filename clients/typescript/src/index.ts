import createClient, { type Client } from 'openapi-fetch'
import type { components, operations, paths } from './schema.ts'

export type { components, operations, paths }

/** An error as the API reports it: RFC 9457 problem details (application/problem+json). */
export type Problem = components['schemas']['Problem']

type Credential =
  | { /** A tenant API key (rfk_...). */ apiKey: string, token?: never }
  | { /** A user's JWT. */ token: string, apiKey?: never }

export type RowfenceClientOptions = Credential & {
  /** Where the API is served: https://api.example.com (the paths carry /v1 and /admin/v1 themselves). */
  baseUrl: string
  /** The tenant to act for: a user's token needs it (unless it has a tid claim); an API key's is implied. */
  tenantId?: string
  /** Another fetch (a proxy, retries, tests); the global one by default. */
  fetch?: (request: Request) => Promise<Response>
}

/** The paths whose GET answers with a page: `{ data: [...], next_cursor }`. */
export type PagedPath = {
  [P in keyof paths]: paths[P] extends { get: { responses: { 200: { content: { 'application/json': infer Page } } } } }
    ? Page extends { data: unknown[], next_cursor: string | null } ? P : never
    : never
}[keyof paths]

type PageOf<P extends PagedPath> =
  paths[P] extends { get: { responses: { 200: { content: { 'application/json': infer Page } } } } } ? Page : never

/** What a paged path lists: Invoice for /v1/invoices, and so on. */
export type ItemOf<P extends PagedPath> = PageOf<P> extends { data: Array<infer Item> } ? Item : never

/** A paged path's query parameters but the cursor, which the iterator sets itself. */
export type PageQuery<P extends PagedPath> =
  paths[P] extends { get: { parameters: { query?: infer Query } } } ? Omit<NonNullable<Query>, 'cursor'> : never

/** A response that was not a success, thrown by the helpers that cannot hand back `{ error }`. */
export class RowfenceError extends Error {
  override name = 'RowfenceError'
  constructor (readonly status: number, readonly problem: Problem | undefined) {
    super(problem?.detail ?? problem?.title ?? `the API answered ${status}`)
  }
}

export interface RowfenceClient extends Client<paths> {
  /**
   * Every item of a list, newest first, fetching page after page (following next_cursor) as the loop
   * asks for more. A failed page throws a RowfenceError.
   */
  paginate: <P extends PagedPath>(path: P, query?: PageQuery<P>) => AsyncGenerator<ItemOf<P>, void, undefined>
}

/**
 * The header that makes a POST safe to retry: for 24 hours the API answers a repeat with the same
 * key and body with the first response (idempotent-replayed: true), and the same key with another body
 * with a 409. Keep the key while you may retry that one request; a new request needs a new key.
 */
export function idempotencyKey (key: string = globalThis.crypto.randomUUID()): { 'idempotency-key': string } {
  return { 'idempotency-key': key }
}

/** A typed client of the rowfence API: openapi-fetch over the types of the API's own OpenAPI document. */
export function createRowfenceClient (options: RowfenceClientOptions): RowfenceClient {
  const credential = options.apiKey ?? options.token
  const client = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ''),
    headers: {
      authorization: `Bearer ${credential}`,
      ...(options.tenantId !== undefined && { 'x-tenant-id': options.tenantId }),
    },
    ...(options.fetch !== undefined && { fetch: options.fetch }),
  })

  async function * paginate<P extends PagedPath> (path: P, query?: PageQuery<P>): AsyncGenerator<ItemOf<P>> {
    let cursor: string | undefined
    do {
      // The path is one of several, so openapi-fetch cannot tie its init and result types to it here;
      // PagedPath and ItemOf do, for the caller.
      const get = client.GET as (path: string, init: unknown) => Promise<{
        data?: { data: Array<ItemOf<P>>, next_cursor: string | null }, error?: Problem, response: Response
      }>
      const { data, error, response } = await get(path, { params: { query: { ...query, cursor } } })
      if (data === undefined) throw new RowfenceError(response.status, error)
      yield * data.data
      cursor = data.next_cursor ?? undefined
    } while (cursor !== undefined)
  }

  return Object.assign(client, { paginate })
}
