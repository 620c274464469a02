import { HttpProblem, conflict, unavailable, unprocessable, badRequest, quotaExceeded } from '../errors.ts'

/**
 * The one place where PostgreSQL and driver errors become HTTP problems. Messages are written
 * here, never copied from the database, so no SQL, table or constraint name reaches a client.
 */

interface PgLikeError {
  code?: string
  constraint?: string
  detail?: string
  message?: string
}

/** Constraint names the API explains in its own words. */
const UNIQUE_MESSAGES: Record<string, string> = {
  tenants_slug_key: 'a tenant with this slug already exists',
  customers_external_ref_key: 'a customer with this external_ref already exists',
  memberships_user_key: 'this user is already a member',
  invoices_number_key: 'this invoice number is already taken',
}

/** Foreign keys the API explains: the field that failed to resolve, and what "still referenced" means. */
const FOREIGN_KEYS: Record<string, { field: string, missing: string, referenced: string }> = {
  invoices_customer_fkey: {
    field: 'body/customer_id',
    missing: 'customer_id does not refer to one of your customers',
    referenced: 'the customer still has invoices',
  },
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN',
])
const CONNECTION_MESSAGES = [
  'timeout exceeded when trying to connect',
  'Connection terminated',
  'Client has encountered a connection error',
  'connect ECONNREFUSED',
]

function isPgLike (error: unknown): error is PgLikeError & Error {
  return error instanceof Error
}

/** True for errors that mean "the database is not reachable right now". */
export function isConnectionError (error: unknown): boolean {
  if (!isPgLike(error)) return false
  const code = error.code ?? ''
  if (CONNECTION_CODES.has(code)) return true
  // 08: connection exception; 57P01..57P03: admin/crash shutdown, cannot connect now; 53300: too many connections.
  if (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300') return true
  return CONNECTION_MESSAGES.some((m) => error.message.includes(m))
}

/**
 * Returns the problem for a database error, or undefined when it is not one we recognise or it is
 * the server's own fault: the error handler answers those with a generic 500 and logs the error.
 */
export function problemFromDatabaseError (error: unknown): HttpProblem | undefined {
  if (!isPgLike(error)) return undefined
  if (isConnectionError(error)) return unavailable('the database is unavailable; retry shortly')
  switch (error.code) {
    case '23505':
      return conflict(UNIQUE_MESSAGES[error.constraint ?? ''] ?? 'the request conflicts with an existing resource')
    case '23503': {
      // The same SQLSTATE covers "a referenced row is missing" (insert/update: 422) and
      // "this row is still referenced" (delete: a state conflict, 409).
      const known = FOREIGN_KEYS[error.constraint ?? '']
      if (/still referenced/.test(error.detail ?? '')) {
        return conflict(known?.referenced ?? 'the resource is still referenced by other resources', 'still-referenced')
      }
      return known === undefined
        ? unprocessable('a referenced resource does not exist')
        : unprocessable(known.missing, [{ path: known.field, message: 'does not resolve inside your tenant' }])
    }
    case '23514':
      // The same SQLSTATE covers a row no partition accepts (a sharded table lacks the partition of
      // a live shard, src/ops/shard-checks.ts) or a partition's own constraint refuses: those name no
      // constraint, where every check constraint is named (read from the error's field, not its
      // message, which follows lc_messages). That is the server's fault, not the request's: left to
      // the error handler's generic 500, logged with the database's message, which never reaches the client.
      if (error.constraint === undefined) return undefined
      return badRequest('a value is invalid or out of range')
    case '23502':
    case '22001':
    case '22003':
    case '22007':
    case '22008':
    case '22P02':
      return badRequest('a value is invalid or out of range')
    // A NUL byte (or another character the database encoding cannot hold) in text or JSON: the
    // schemas refuse NUL first; this is the backstop for any input that reaches SQL without one.
    case '22021':
    case '22P05':
      return badRequest('a text value contains a character that cannot be stored (e.g. a NUL byte)')
    case '40001':
    case '40P01':
    case '55P03':
      return unavailable('the request collided with a concurrent change; retry it', 1)
    case '57014':
      return unavailable('the database took too long to answer; retry shortly')
    case 'RQ001':
      return quotaProblem(error.detail)
    default:
      return undefined
  }
}

/** sql/0020's usage_refuse: the figures travel as JSON in the error's DETAIL. */
function quotaProblem (detail: string | undefined): HttpProblem | undefined {
  try {
    const figures = JSON.parse(detail ?? '') as { quota: string, limit: number, used: number, resets_at: string | null }
    const resetsAt = figures.resets_at === null ? null : new Date(figures.resets_at).toISOString()
    return quotaExceeded({ quota: figures.quota, limit: figures.limit, used: figures.used, resets_at: resetsAt })
  } catch {
    return undefined // not ours after all: the generic 500, logged
  }
}
