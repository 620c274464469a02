import { Readable } from 'node:stream'
import type { ReadableStream as WebReadableStream } from 'node:stream/web'
import { CliError, EXIT, failureError, type ExitCode } from './output.ts'

interface Problem {
  title?: string
  status?: number
  detail?: string
  errors?: Array<{ path?: string, message?: string }>
}

/** The exit code of an HTTP error: what the server said of the request, in the CLI's terms. */
function exitCodeOf (status: number): ExitCode {
  if (status === 400) return EXIT.usage
  if (status === 404) return EXIT.notFound
  if (status === 409) return EXIT.refused
  return EXIT.failure
}

/** A client of the operator API (/admin/v1) that turns problem+json answers into CliErrors. */
export class OperatorApi {
  private readonly base: string

  constructor (url: string, private readonly token: string, private readonly tokenSource: string) {
    this.base = url.replace(/\/+$/, '')
  }

  get url (): string { return this.base }

  /** The parsed JSON answer; undefined for 204. */
  async request<T> (method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.send(method, path, body)
    const text = await response.text()
    if (response.ok) return (text === '' ? undefined : JSON.parse(text)) as T
    throw this.failure(response.status, text)
  }

  /**
   * A GET whose answer is a download: its body as it arrives, never held whole. An error answer is small
   * and turned into a CliError as request's are; a connection lost midway fails the stream's reads.
   */
  async download (path: string): Promise<Readable> {
    const response = await this.send('GET', path)
    if (!response.ok) throw this.failure(response.status, await response.text())
    return response.body === null ? Readable.from([]) : Readable.fromWeb(response.body as WebReadableStream)
  }

  private async send (method: string, path: string, body?: unknown): Promise<Response> {
    let response: Response
    try {
      response = await fetch(`${this.base}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body !== undefined && { 'content-type': 'application/json' }),
        },
        ...(body !== undefined && { body: JSON.stringify(body) }),
        // A redirect would carry the token to wherever it points: refused, never followed.
        redirect: 'error',
      })
    } catch (error) {
      const cause = (error as { cause?: { code?: string, message?: string } }).cause
      if (cause?.message === 'unexpected redirect') {
        throw failureError(`the server at ${this.base} answered with a redirect, which the CLI does not follow ` +
          '(it would take the operator token along): pass the final URL with --url')
      }
      const why = cause?.code ?? cause?.message ?? (error as Error).message
      throw failureError(`cannot reach the server at ${this.base} (${why}): is it running? ` +
        '(start it with npm start, or pass --url)')
    }
    return response
  }

  /** The CliError of an error answer: the problem's detail, with the exit code its status calls for. */
  private failure (status: number, text: string): CliError {
    if (status === 401) {
      return new CliError(`the server at ${this.base} refused the operator token (${this.tokenSource})`, EXIT.failure)
    }
    let problem: Problem = {}
    try {
      problem = JSON.parse(text) as Problem
    } catch {
      problem = { detail: text.slice(0, 200) }
    }
    const detail = problem.detail ?? problem.title ?? `HTTP ${status}`
    const fieldErrors = (problem.errors ?? []).map((e) => `${e.path ?? ''} ${e.message ?? ''}`.trim())
    const message = fieldErrors.length > 0 ? `${detail} (${fieldErrors.join('; ')})` : detail
    return new CliError(status >= 500 ? `the server failed (${status}): ${message}` : message, exitCodeOf(status))
  }

  /** Every item of a paginated list (GET with ?limit=&cursor=), page after page. */
  async all<T> (path: string, query: Record<string, string> = {}): Promise<T[]> {
    const items: T[] = []
    let cursor: string | null = null
    do {
      const params = new URLSearchParams({ ...query, limit: '200', ...(cursor !== null && { cursor }) })
      const page: { data: T[], next_cursor: string | null } = await this.request('GET', `${path}?${params.toString()}`)
      items.push(...page.data)
      cursor = page.next_cursor
    } while (cursor !== null)
    return items
  }
}
