import type pg from 'pg'
import {
  insertAuditCheckpoint, verifyChainStep, VERIFY_STEP_MAX, type ChainBreak, type ChainPosition,
} from '../repositories/audit-events.ts'
import { withTenantTransaction, type TransactionTimeouts } from '../db/tenant-transaction.ts'

export interface FullChainVerification {
  /** The chain's length as its head records it. */
  events: number
  /** Events whose hash and link were recomputed (a batch's starting event is counted again). */
  examined: number
  batches: number
  broken: ChainBreak | null
  /** The checkpoint recorded at the head when the whole chain held. */
  checkpoint: number | null
}

/**
 * The operator's full verification of a tenant's audit chain: from the first event to the head,
 * ignoring every checkpoint as a starting point (each is checked against its event instead), in
 * keyset batches of `batchSize` events. Each batch is a short tenant-bound transaction of its own on
 * the owner connection, with the request's statement timeout: no statement grows with the trail, and
 * no lock or snapshot is held for the whole walk (a placement move or an erasure waits for one batch
 * at most; the shard is read afresh by each batch's binding). Each batch starts at the last event of
 * the one before, whose hash must not have changed in between. When the whole chain holds, a
 * checkpoint is recorded at the head, so the tenant's own verifications start from there.
 * Returns undefined when the tenant does not exist.
 */
export async function verifyWholeAuditChain (
  pool: pg.Pool,
  tenantId: string,
  options: { batchSize?: number, timeouts?: TransactionTimeouts } = {}
): Promise<FullChainVerification | undefined> {
  const batchSize = Math.min(options.batchSize ?? VERIFY_STEP_MAX, VERIFY_STEP_MAX)
  let from: ChainPosition = { seq: 0, hash: null }
  let examined = 0
  let batches = 0
  for (;;) {
    const outcome = await withTenantTransaction(pool, tenantId, async (trx) => {
      const { shard } = await trx.ready
      if (shard === null) return undefined
      const step = await verifyChainStep(trx.db, { tenantId, shard }, from, batchSize)
      let checkpoint: number | null = null
      if (step.complete && step.broken === null && step.through.seq > 0 && step.through.hash !== null) {
        await insertAuditCheckpoint(trx.db, { seq: step.through.seq, hash: step.through.hash })
        checkpoint = step.through.seq
      }
      return { step, checkpoint }
    }, options.timeouts === undefined ? {} : { timeouts: options.timeouts })
    if (outcome === undefined) return undefined
    const { step, checkpoint } = outcome
    examined += step.examined
    batches++
    if (step.complete) return { events: step.headSeq, examined, batches, broken: step.broken, checkpoint }
    from = step.through
  }
}
