/**
 * Problem details (RFC 9457). Every error response of the API is one of these; handlers throw
 * HttpProblem and the error handler (src/plugins/app/errors.ts) serialises it.
 */
export const PROBLEM_CONTENT_TYPE = 'application/problem+json'
export const PROBLEM_BASE = 'https://rowfence.dev/problems/'

export interface FieldError {
  path: string
  message: string
}

export interface ProblemOptions {
  detail?: string
  errors?: FieldError[]
  headers?: Record<string, string>
  /** Members of this problem type beyond the standard ones (RFC 9457 extension members). */
  extensions?: Record<string, unknown>
}

const TITLES: Record<number, [slug: string, title: string]> = {
  400: ['bad-request', 'Bad Request'],
  401: ['unauthorized', 'Unauthorized'],
  403: ['forbidden', 'Forbidden'],
  404: ['not-found', 'Not Found'],
  405: ['method-not-allowed', 'Method Not Allowed'],
  406: ['not-acceptable', 'Not Acceptable'],
  408: ['request-timeout', 'Request Timeout'],
  409: ['conflict', 'Conflict'],
  413: ['payload-too-large', 'Payload Too Large'],
  414: ['uri-too-long', 'URI Too Long'],
  415: ['unsupported-media-type', 'Unsupported Media Type'],
  422: ['unprocessable-content', 'Unprocessable Content'],
  429: ['too-many-requests', 'Too Many Requests'],
  431: ['request-header-fields-too-large', 'Request Header Fields Too Large'],
  500: ['internal', 'Internal Server Error'],
  503: ['unavailable', 'Service Unavailable'],
}

export class HttpProblem extends Error {
  override name = 'HttpProblem'
  readonly status: number
  readonly type: string
  readonly title: string
  readonly detail: string | undefined
  readonly errors: FieldError[] | undefined
  readonly headers: Record<string, string>
  readonly extensions: Record<string, unknown>

  constructor (status: number, options: ProblemOptions & { slug?: string, title?: string } = {}) {
    const [slug, title] = TITLES[status] ?? TITLES[status >= 500 ? 500 : 400]!
    super(options.detail ?? options.title ?? title)
    this.status = status
    this.type = PROBLEM_BASE + (options.slug ?? slug)
    this.title = options.title ?? title
    this.detail = options.detail
    this.errors = options.errors
    this.headers = options.headers ?? {}
    this.extensions = options.extensions ?? {}
  }

  toJSON (instance?: string): Record<string, unknown> {
    return {
      type: this.type,
      title: this.title,
      status: this.status,
      ...(this.detail !== undefined && { detail: this.detail }),
      ...(instance !== undefined && { instance }),
      ...(this.errors !== undefined && { errors: this.errors }),
      ...this.extensions,
    }
  }
}

export const badRequest = (detail: string, errors?: FieldError[]): HttpProblem =>
  new HttpProblem(400, { detail, ...(errors !== undefined && { errors }) })

export const unauthorized = (detail: string): HttpProblem =>
  new HttpProblem(401, { detail, headers: { 'www-authenticate': 'Bearer realm="rowfence"' } })

export const forbidden = (detail: string): HttpProblem => new HttpProblem(403, { detail })

export const notFound = (what: string): HttpProblem => new HttpProblem(404, { detail: `${what} not found` })

export const conflict = (detail: string, slug?: string): HttpProblem =>
  new HttpProblem(409, { detail, ...(slug !== undefined && { slug }) })

export const unprocessable = (detail: string, errors?: FieldError[]): HttpProblem =>
  new HttpProblem(422, { detail, ...(errors !== undefined && { errors }) })

export const unavailable = (detail: string, retryAfterSeconds = 2): HttpProblem =>
  new HttpProblem(503, { detail, headers: { 'retry-after': String(retryAfterSeconds) } })

/** A quota would be exceeded by the write (sql/0020 refuses it at COMMIT): nothing was written. */
export const quotaExceeded = (figures: { quota: string, limit: number, used: number, resets_at: string | null }):
HttpProblem => new HttpProblem(403, {
  slug: 'quota-exceeded',
  title: 'Quota Exceeded',
  detail: `the ${figures.quota} quota (${figures.limit}) is used up` +
    (figures.resets_at === null ? '' : `; it resets at ${figures.resets_at}`),
  extensions: figures,
})
