import type { Kysely } from 'kysely'
import type pg from 'pg'
import { cancelRunningQuery } from './cancel.ts'
import { assertPoolQueue } from './pool-queue.ts'
import {
  FinishedTransactionGuard, kyselyFor, statement, usesPreparedStatements, type ClientConnection,
} from './client-driver.ts'
import type { PartialLimits } from '../limits/limits.ts'
import type { DB } from './schema.ts'

/** Salt of the per-tenant advisory lock (src/tenancy/operation-lock.ts: tenantLockKey; sql/0008's bind_tenant). */
export const TENANT_LOCK_SALT = 7301

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * Binds the tenant for the transaction (sql/0008: bind_tenant): `set_config(..., true)` is
 * transaction-local, so the binding ends with COMMIT or ROLLBACK and a pooled connection can never
 * carry a tenant into the next request; then the tenant's lock in shared mode until the transaction
 * ends (placement moves and erasure take it exclusively); then, read after the lock is granted, the
 * tenant's current shard and status and, when asked, the presented key or the user's membership.
 */
export const BIND_SQL = 'SELECT shard, status, key_scopes, key_secret_hash, member_role, limits ' +
  'FROM bind_tenant($1::uuid, $2::uuid, $3::text)'

/**
 * bind_tenant() plus the transaction's own settings, set transaction-locally like the binding (no
 * session state, so it holds behind a transaction-pooling PgBouncer too): no statement runs longer
 * than $4 ms, a transaction left idle by its client for $5 ms is ended by the server, and $6 holds
 * the configured default quotas the database judges writes against (sql/0020: tenant_limit); with $7 it
 * also answers the tenant's limits (sql/0022).
 */
export const BIND_WITH_TIMEOUTS_SQL = `SELECT shard, status, key_scopes, key_secret_hash, member_role, limits,
  set_config('statement_timeout', $4, true) AS statement_timeout,
  set_config('idle_in_transaction_session_timeout', $5, true) AS idle_timeout,
  set_config('app.default_limits', $6, true) AS default_limits
  FROM bind_tenant($1::uuid, $2::uuid, $3::text, $7::boolean)`

export interface TransactionTimeouts {
  statementMs: number
  idleInTransactionMs: number
  /** The default quotas as JSON (src/limits/limits.ts: quotaDefaultsSetting); none: only plans' quotas hold. */
  defaultLimits?: string
}

const CANCEL_SENT = 'a cancel request was sent on this connection'

/** Why a transaction was aborted from outside (its client left, its deadline passed). */
export class TransactionAborted extends Error {
  override name = 'TransactionAborted'
}

export interface Binding {
  /** null when the tenant does not exist (any more). */
  shard: number | null
  status: string | null
  /** The presented key, when it is live in this tenant. */
  key_scopes: string[] | null
  key_secret_hash: Buffer | null
  /** The user's role in this tenant, when a member. */
  member_role: string | null
  /**
   * When asked (BeginOptions.wantLimits): the tenant's plan limits and overrides (sql/0022), each null when
   * the operator set none; null when not asked. src/limits/limits.ts resolves them against the defaults.
   */
  limits: { plan: PartialLimits | null, overrides: PartialLimits | null } | null
}

const NO_BINDING: Binding = {
  shard: null, status: null, key_scopes: null, key_secret_hash: null, member_role: null, limits: null,
}

/** How startTenantTransaction set a transaction up. */
interface TransactionSetup {
  readOnly: boolean
  singleQuery: boolean
  confirm: ((binding: Binding) => void) | undefined
  /** Whether the pool's statements are named (RowfencePoolConfig.preparedStatements). */
  preparedStatements: boolean
}

/** A transaction bound to one tenant, on one pooled connection: only that tenant's rows exist in it. */
export class TenantTransaction {
  readonly client: pg.PoolClient
  /** Kysely on this transaction's connection. */
  readonly db: Kysely<DB>
  readonly readOnly: boolean
  /** Settles when BEGIN and the binding have been answered. */
  readonly ready: Promise<Binding>
  readonly #connection: ClientConnection
  readonly #singleQuery: boolean
  /** The COMMIT sent right behind the one query of a single-query read. */
  #earlyCommit: Promise<unknown> | null = null
  #finished = false

  /**
   * Settles once the binding has been answered and, when a check was given, accepted: every query
   * result and the COMMIT wait for it. Rejects with the binding's error or the check's refusal.
   */
  readonly confirmed: Promise<void>

  constructor (client: pg.PoolClient, ready: Promise<Binding>, options: TransactionSetup) {
    this.client = client
    const { db, connection } = kyselyFor(client, options.preparedStatements)
    this.db = db.withPlugin(new FinishedTransactionGuard(this))
    this.#connection = connection
    connection.transaction = this
    this.readOnly = options.readOnly
    this.#singleQuery = options.singleQuery && options.readOnly
    const confirm = options.confirm
    this.ready = ready
    ready.catch(() => {}) // observed by commit() or the caller
    ready.then(() => { this.#bindingAnswered = true }, () => { this.#bindingAnswered = true })
    this.confirmed = confirm === undefined ? ready.then(() => {}) : ready.then((binding) => { confirm(binding) })
    this.confirmed.catch(() => {}) // observed by queries, commit() or the caller
  }

  get finished (): boolean { return this.#finished }

  /** Throws when no statement may run in this transaction any more (ended, or aborted from outside). */
  assertOpen (): void {
    if (this.#finished) throw new Error('this tenant transaction has ended; no more statements may run in it')
    if (this.#abortReason !== undefined) throw this.#abortReason
  }

  #abortReason: Error | undefined
  /** Set once abort() was called: no statement may run any more, and the transaction can only roll back. */
  get abortReason (): Error | undefined { return this.#abortReason }
  /** A CancelRequest was sent for this connection's backend: it must not serve anyone else. */
  #cancelSent = false
  #bindingAnswered = false

  /**
   * Stops the transaction from outside (its client disconnected, its deadline passed): the
   * statement running now is cancelled on the server (CancelRequest), any further statement fails
   * with `reason`, and the transaction can only roll back. A connection that was sent a
   * CancelRequest is discarded at release, never reused: a cancel that arrives late must not hit
   * the next request's statement on that backend.
   */
  abort (reason: Error): void {
    if (this.#finished || this.#abortReason !== undefined) return
    this.#abortReason = reason
    if (this.#connection.inFlight > 0 || !this.#bindingAnswered) {
      this.#cancelSent = true
      cancelRunningQuery(this.client)
    }
  }

  /** @internal Called by the connection before each query. */
  beforeQuery (): void {
    if (this.#abortReason !== undefined) throw this.#abortReason
    if (this.#earlyCommit !== null) {
      throw new Error('this route is declared single-query (config.singleQuery) but sent a second query')
    }
  }

  /**
   * @internal Called by the connection right after sending a query: a read-only single-query request
   * sends its COMMIT in the same write, sparing a write and a round trip (it cannot fail meaningfully:
   * nothing was written).
   */
  afterQuery (): void {
    if (this.#singleQuery) {
      this.#earlyCommit = this.client.query('COMMIT')
      this.#earlyCommit.catch(() => {}) // observed by commit() or rollback()
    }
  }

  #release (error?: Error): void {
    if (this.#connection.transaction === this) this.#connection.transaction = null
    // Releasing with an error discards the connection.
    this.client.release(error ?? (this.#cancelSent ? new TransactionAborted(CANCEL_SENT) : undefined))
  }

  /**
   * COMMIT and release. A failed BEGIN/binding or COMMIT is rethrown (the caller must not report
   * success) and the connection is discarded rather than returned to the pool in an unknown state.
   */
  async commit (): Promise<void> {
    if (this.#finished) return
    try {
      if (this.#abortReason !== undefined) throw this.#abortReason
      await this.confirmed
    } catch (error) {
      await this.rollback()
      throw error
    }
    this.#finished = true
    try {
      await (this.#earlyCommit ?? this.client.query('COMMIT'))
    } catch (error) {
      this.#release(error as Error)
      throw error
    }
    this.#release()
  }

  /** ROLLBACK and release; never throws (a connection that cannot roll back is discarded). */
  async rollback (): Promise<void> {
    if (this.#finished) return
    this.#finished = true
    try {
      // A read whose COMMIT already left has nothing to roll back: wait for it instead.
      await (this.#earlyCommit ?? this.client.query('ROLLBACK'))
      this.#release()
    } catch (error) {
      this.#release(error as Error)
    }
  }
}

export interface BeginOptions {
  /** BEGIN READ ONLY: the transaction can write nothing, whatever the handler does. */
  readOnly?: boolean
  /** Also read, after the tenant's lock, this key (if live) or this user's membership. */
  check?: { keyId?: string, userId?: string }
  /**
   * Keep the socket corked until the current I/O turn ends, so that queries issued right away (the
   * handler's) leave in the same write as BEGIN and the binding. Only when nobody waits for `ready`.
   */
  holdWrites?: boolean
  /** A read-only request that sends exactly one query: its COMMIT follows that query in the same write. */
  singleQuery?: boolean
  /**
   * Judges the binding's answer (check's key or membership, tenant status, shard) before any query
   * result is handed out and before COMMIT: throw to refuse. Lets a request send its queries behind
   * the binding without waiting (holdWrites), while nothing it reads or writes survives a refusal.
   */
  confirm?: (binding: Binding) => void
  /** Transaction-local statement and idle-in-transaction timeouts, set by the binding statement. */
  timeouts?: TransactionTimeouts
  /** With timeouts: the binding also answers the tenant's limits (Binding.limits). */
  wantLimits?: boolean
}

/**
 * Checks a connection out of the pool and sends BEGIN and the binding without waiting: on a pool
 * created with `pipeline: true` (the runtime pool) they travel in one round trip, and queries issued
 * before `trx.ready` settles follow them in the same flight. A failed binding aborts the transaction,
 * so nothing that follows it can succeed; `trx.ready` reports why.
 */
export async function startTenantTransaction (
  pool: pg.Pool,
  tenantId: string,
  choose: BeginOptions | (() => BeginOptions) = {},
  queue: { maxWaiting?: number } = {}
): Promise<TenantTransaction> {
  if (!UUID.test(tenantId)) throw new TypeError('tenant id must be a UUID')
  assertPoolQueue(pool, queue.maxWaiting)
  const client = await pool.connect()
  // Decided once the connection is ours, right before sending: a credential cache consulted here
  // cannot have gone stale while the request queued for a connection.
  const options = typeof choose === 'function' ? choose() : choose
  // One write for all messages (pg writes each query on its own otherwise); the stream is pg's own.
  type Stream = { cork?: () => void, uncork?: () => void }
  const stream = (client as unknown as { connection?: { stream?: Stream } }).connection?.stream
  stream?.cork?.()
  const begin = client.query(options.readOnly === true ? 'BEGIN READ ONLY' : 'BEGIN')
  const check = options.check ?? {}
  const timeouts = options.timeouts
  const prepared = usesPreparedStatements(pool)
  const bound = [tenantId, check.keyId ?? null, check.userId ?? null]
  const bind = timeouts === undefined
    ? client.query<Binding>(statement(BIND_SQL, bound, prepared))
    : client.query<Binding>(statement(BIND_WITH_TIMEOUTS_SQL,
      [...bound, String(timeouts.statementMs), String(timeouts.idleInTransactionMs), timeouts.defaultLimits ?? '',
        options.wantLimits === true], prepared))
  if (options.holdWrites === true && stream?.uncork !== undefined) setImmediate(() => stream.uncork!())
  else stream?.uncork?.()
  const ready = Promise.allSettled([begin, bind]).then(([began, bound]) => {
    if (began.status === 'rejected') throw began.reason
    if (bound.status === 'rejected') throw bound.reason
    return (bound.value.rows[0] as Binding | undefined) ?? NO_BINDING
  })
  return new TenantTransaction(client, ready, {
    readOnly: options.readOnly === true,
    singleQuery: options.singleQuery === true,
    confirm: options.confirm,
    preparedStatements: prepared,
  })
}

/** startTenantTransaction, waiting for the binding. */
export async function beginTenantTransaction (
  pool: pg.Pool,
  tenantId: string,
  options: BeginOptions = {}
): Promise<{ trx: TenantTransaction, binding: Binding }> {
  const trx = await startTenantTransaction(pool, tenantId, options)
  try {
    return { trx, binding: await trx.ready }
  } catch (error) {
    await trx.rollback()
    throw error
  }
}

/**
 * Runs `work` in a tenant transaction: COMMIT when it resolves, ROLLBACK when it throws. With
 * `holdWrites`, `work`'s first statements leave in the same write as BEGIN and the binding (it is
 * not waited for: a failed binding fails them, and the transaction rolls back).
 */
export async function withTenantTransaction<T> (
  pool: pg.Pool, tenantId: string, work: (trx: TenantTransaction) => Promise<T>, options: BeginOptions = {}
): Promise<T> {
  const trx = options.holdWrites === true
    ? await startTenantTransaction(pool, tenantId, options)
    : (await beginTenantTransaction(pool, tenantId, options)).trx
  let result: T
  try {
    result = await work(trx)
  } catch (error) {
    await trx.rollback()
    throw error
  }
  await trx.commit()
  return result
}
