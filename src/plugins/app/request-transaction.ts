import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { PoolSaturated } from '../../db/pool-queue.ts'
import { startTenantTransaction, type BeginOptions, type TenantTransaction } from '../../db/tenant-transaction.ts'
import type { Slot } from '../../limits/fair-share.ts'
import { HttpProblem, unavailable } from '../../errors.ts'
import { takeTenantSlot } from './fair-share.ts'

/**
 * A tenant request's transaction, from the moment the tenant pipeline (tenant-context.ts) opens it to
 * its end; registered by the pipeline, on the /v1 scope only:
 *
 *  onRequest   the request's deadline, and its client's disconnection: either one cancels the running
 *              statement (and the transaction can only roll back)
 *  onSend      COMMIT before the response leaves (a failed COMMIT, or a cached credential that the
 *              binding's fresh answer no longer confirms, becomes an error response, never a false
 *              2xx), or ROLLBACK for any error status or a client that has disconnected
 *  onResponse  safety net: roll back and release whatever is still open
 */

declare module 'fastify' {
  interface FastifyRequest {
    tenantTransaction: TenantTransaction | null
    /**
     * The slot of its tenant's share of the pool (fair-share.ts) that the request holds or waits for:
     * released when its transaction ends (endTransaction), whatever the outcome.
     */
    tenantSlot: Slot | null
    /**
     * Work to do inside the request's transaction after the handler, just before a successful
     * COMMIT, with the serialised response (e.g. storing it for an idempotency key).
     */
    beforeCommit: Array<(status: number, payload: unknown) => Promise<void>> | null
    /** Work to do once the transaction has committed, before the response leaves. */
    afterCommit: Array<() => Promise<void>> | null
    /** The request's deadline (REQUEST_DEADLINE_MS): when it fires, the transaction is aborted. */
    tenantDeadline: NodeJS.Timeout | null
    /** Why the request's work must stop before it is done (its client left, its deadline passed). */
    interruption: Interruption | null
  }
}

export interface Interruption {
  /** A client gone is rolled back whatever the status; a deadline is answered 503. */
  reason: 'client-gone' | 'deadline'
  problem: HttpProblem
}

/** Makes `trx` the request's transaction: aborted at once if the request was interrupted already. */
export function holdTransaction (request: FastifyRequest, trx: TenantTransaction): void {
  request.tenantTransaction = trx
  if (request.interruption !== null) trx.abort(request.interruption.problem)
}

/** A full connection queue is a 503 to retry, logged as load shedding; anything else goes on. */
export function shedWhenSaturated (request: FastifyRequest): (error: unknown) => never {
  return (error: unknown): never => {
    if (error instanceof PoolSaturated) {
      request.log.warn({ event: 'load_shed', reason: error.message },
        'refused: the database connection queue is full')
      throw unavailable('the server is at capacity; retry shortly', 1)
    }
    throw error
  }
}

/**
 * Opens the request's transaction once it holds a slot of its tenant's share of the pool (`share`: its
 * concurrent_requests limit), so that a tenant's requests past its share wait in its own queue, never in
 * the pool's. The slot is the transaction's: endTransaction releases it, and so does a start that fails here.
 */
export async function openTransaction (
  fastify: FastifyInstance, request: FastifyRequest, tenantId: string, share: number | null,
  choose: BeginOptions | (() => BeginOptions)
): Promise<TenantTransaction> {
  await takeTenantSlot(fastify, request, tenantId, share)
  const trx = await startTenantTransaction(fastify.dbPool, tenantId, choose, {
    maxWaiting: fastify.dbLimits.maxWaiting,
  }).catch((error: unknown) => {
    releaseSlot(request)
    return shedWhenSaturated(request)(error)
  })
  // Held as the request's transaction from here, so that its deadline and a client leaving cancel it.
  holdTransaction(request, trx)
  return trx
}

/** Gives back the request's slot of its tenant's share, held or awaited (once: later calls do nothing). */
export function releaseSlot (request: FastifyRequest): void {
  const slot = request.tenantSlot
  request.tenantSlot = null
  slot?.release()
}

/**
 * Ends the request's transaction, if one is open: COMMIT (which may throw) or ROLLBACK. Then, however
 * that went and even with no transaction open (its start failed), the slot of its tenant's share is
 * released: once the connection is back in the pool, for the tenant's next request to take.
 */
export async function endTransaction (request: FastifyRequest, commit: boolean): Promise<void> {
  const trx = request.tenantTransaction
  try {
    if (trx === null) return
    request.tenantTransaction = null
    request.tenantDb = null
    // Reads too wait for their COMMIT (for a single-query read it left with the query and is answered
    // in the same packet): the response never goes out ahead of its transaction's end.
    if (commit) await trx.commit()
    else await trx.rollback()
  } finally {
    releaseSlot(request)
  }
}

async function requestTransaction (fastify: FastifyInstance): Promise<void> {
  fastify.decorateRequest('tenantTransaction', null)
  fastify.decorateRequest('tenantSlot', null)
  fastify.decorateRequest('beforeCommit', null)
  fastify.decorateRequest('afterCommit', null)
  fastify.decorateRequest('tenantDeadline', null)
  fastify.decorateRequest('interruption', null)

  const { deadlineMs } = fastify.dbLimits
  // Nobody reads this answer; the status (nginx's 499) is for the logs and metrics.
  const clientGone = (): HttpProblem => new HttpProblem(499, {
    slug: 'client-closed-request', title: 'Client Closed Request', detail: 'the client disconnected',
  })
  const deadlinePassed = (): HttpProblem =>
    unavailable(`the request did not complete within ${deadlineMs} ms and was cancelled; retry it`, 1)

  fastify.addHook('onRequest', async (request, reply) => {
    request.tenantDeadline = setTimeout(() => {
      if (reply.raw.writableEnded) return
      request.interruption = { reason: 'deadline', problem: deadlinePassed() }
      request.log.warn({ event: 'deadline_exceeded', deadlineMs },
        'request deadline passed: cancelling its transaction')
      request.tenantTransaction?.abort(request.interruption.problem)
      request.tenantSlot?.cancel(request.interruption.problem) // still waiting for its turn: leaves the queue
    }, deadlineMs).unref()
    // A client that disconnects gets its work rolled back, and its running statement cancelled so
    // that it stops holding a backend and a pooled connection. (onResponse does not run for it;
    // Fastify's onRequestAbort only covers a request that is still being received.)
    reply.raw.once('close', () => {
      if (request.tenantDeadline !== null) clearTimeout(request.tenantDeadline)
      if (reply.raw.writableEnded) return
      // Takes precedence over a deadline that passed before: the work is rolled back either way.
      request.interruption = { reason: 'client-gone', problem: clientGone() }
      request.log.info('client disconnected before the response; its transaction is cancelled and rolled back')
      request.tenantTransaction?.abort(request.interruption.problem)
      request.tenantSlot?.cancel(request.interruption.problem)
    })
  })

  fastify.addHook('onSend', async (request, reply, payload) => {
    const commit = reply.statusCode < 400 && request.interruption?.reason !== 'client-gone' &&
      request.tenantTransaction !== null
    if (commit) {
      const work = request.beforeCommit ?? []
      request.beforeCommit = null
      try {
        for (const step of work) await step(reply.statusCode, payload)
      } catch (error) {
        await endTransaction(request, false)
        throw error
      }
    }
    await endTransaction(request, commit)
    if (commit) {
      const after = request.afterCommit ?? []
      request.afterCommit = null
      for (const step of after) await step()
    }
    return payload
  })

  fastify.addHook('onResponse', async (request) => {
    if (request.tenantDeadline !== null) clearTimeout(request.tenantDeadline)
    await endTransaction(request, false)
  })
}

export default fp(requestTransaction, { name: 'request-transaction', dependencies: ['db'] })
