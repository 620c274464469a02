import { sql, type Insertable, type Kysely, type Selectable } from 'kysely'
import type { AuditEvents, DB } from '../db/schema.ts'

type Executor = Kysely<DB>
export type AuditEventRow = Selectable<AuditEvents>

/** What the database decided for an appended event: its place in the chain and its hash (hex). */
export interface AppendedAuditEvent {
  seq: number
  hash: string
}

/**
 * Appends an event. The database decides the time (occurred_at), the chain position and the hashes
 * (sql/0006, 0011: the runtime role may not supply them); they are returned for the head anchor.
 */
export async function insertAuditEvent (
  trx: Executor,
  event: Omit<Insertable<AuditEvents>, 'tenant_id' | 'shard' | 'occurred_at' | 'seq' | 'hash' | 'prev_hash'>
): Promise<AppendedAuditEvent> {
  const row = await trx.insertInto('audit_events').values(event).returning(['seq', 'hash']).executeTakeFirstOrThrow()
  return { seq: Number(row.seq), hash: row.hash.toString('hex') }
}

export async function listAuditEvents (
  trx: Executor,
  page: { limit: number, before?: string | undefined }
): Promise<AuditEventRow[]> {
  let query = trx.selectFrom('audit_events').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

/**
 * The most events one verification step recomputes, in one statement ranged on the (tenant_id, seq)
 * index: its cost does not grow with the trail. Measured on PostgreSQL 15 (a 30,000-event trail, a
 * busy 2-CPU machine): 0.7-0.9 s for 10,000 events, inside the 5 s default statement timeout.
 */
export const VERIFY_STEP_MAX = 10_000

/** The first event (in chain order) whose link does not hold, and why. */
export interface ChainBreak { id: string | null, seq: number, reason: string }

/** Where a step starts: a position already verified (0: before the first event) and its hash then. */
export interface ChainPosition { seq: number, hash: Buffer | null }

/** One bounded step along the chain. */
export interface ChainStep {
  /** The chain's length as its head records it (0 for an empty trail). */
  headSeq: number
  /** Events whose hash and link were recomputed (the starting event included). */
  examined: number
  /** The last event of the step, or the start when the step found none. */
  through: ChainPosition
  /** The step reached the head and checked it against the last event. */
  complete: boolean
  broken: ChainBreak | null
}

interface StepRow {
  examined: string
  broken_id: string | null
  broken_seq: string | null
  ok_prev: boolean | null
  ok_seq: boolean | null
  from_id: string | null
  from_hash: Buffer | null
  through_seq: string | null
  through_hash: Buffer | null
  head_seq: string | null
  head_hash: Buffer | null
  last_seq: string | null
  last_hash: Buffer | null
  stray_checkpoint: string | null
  stray_event_missing: boolean | null
  newest_checkpoint: string | null
}

const sameHash = (a: Buffer | null, b: Buffer | null): boolean => a === null ? b === null : b !== null && a.equals(b)

/**
 * Verifies the events after `from` (at most `limit` of them) in one statement: each event's hash must
 * match its content and its predecessor's hash, seq must run without gaps, the event at `from` must
 * still carry `from.hash` and still link to its predecessor, and every checkpoint in the range must
 * match its event. When the step reaches the end of the chain, the head must point at the last event.
 * Raw SQL (window functions): the tenant predicates are written here, the scoping plugin cannot add
 * them. The predecessor of the starting event is read for its hash only (the starting event's link).
 */
export async function verifyChainStep (
  trx: Executor,
  scope: { tenantId: string, shard: number },
  from: ChainPosition,
  limit: number
): Promise<ChainStep> {
  const t = scope.tenantId
  const s = scope.shard
  const first = Math.max(from.seq, 1)
  const end = from.seq + limit
  const { rows: [row] } = await sql<StepRow>`
    WITH links AS MATERIALIZED (
      SELECT e.id, e.seq, e.hash,
             e.hash = audit_event_hash(e.prev_hash, e) AS ok_hash,
             e.prev_hash IS NOT DISTINCT FROM lag(e.hash) OVER w AS ok_prev,
             e.seq = coalesce(lag(e.seq) OVER w, 0) + 1 AS ok_seq
        FROM audit_events e
       WHERE e.tenant_id = ${t} AND e.shard = ${s} AND e.seq >= ${from.seq - 1} AND e.seq <= ${end}
      WINDOW w AS (ORDER BY e.seq)
    ), checked AS MATERIALIZED (SELECT * FROM links WHERE seq >= ${first})
    SELECT (SELECT count(*) FROM checked) AS examined,
           b.id AS broken_id, b.seq AS broken_seq, b.ok_prev, b.ok_seq,
           f.id AS from_id, f.hash AS from_hash, th.seq AS through_seq, th.hash AS through_hash,
           h.seq AS head_seq, h.hash AS head_hash, l.seq AS last_seq, l.hash AS last_hash,
           k.seq AS stray_checkpoint, k.missing AS stray_event_missing,
           (SELECT max(n.seq) FROM audit_checkpoints n WHERE n.tenant_id = ${t}) AS newest_checkpoint
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (SELECT * FROM checked WHERE NOT (ok_hash AND ok_prev AND ok_seq)
                          ORDER BY seq LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT id, hash FROM checked WHERE seq = ${from.seq}) f ON true
      LEFT JOIN LATERAL (SELECT seq, hash FROM checked ORDER BY seq DESC LIMIT 1) th ON true
      LEFT JOIN audit_heads h ON h.tenant_id = ${t}
      LEFT JOIN LATERAL (SELECT x.seq, x.hash FROM audit_events x WHERE x.tenant_id = ${t} AND x.shard = ${s}
                          ORDER BY x.seq DESC LIMIT 1) l ON true
      LEFT JOIN LATERAL (SELECT c.seq, m.seq IS NULL AS missing
                           FROM audit_checkpoints c LEFT JOIN checked m ON m.seq = c.seq
                          WHERE c.tenant_id = ${t} AND c.seq >= ${first} AND c.seq <= ${end}
                            AND m.hash IS DISTINCT FROM c.hash
                          ORDER BY c.seq LIMIT 1) k ON true`.execute(trx)
  const r = row!
  const headSeq = Number(r.head_seq ?? 0)
  const through: ChainPosition = r.through_seq === null ? from : { seq: Number(r.through_seq), hash: r.through_hash }
  const step = (broken: ChainBreak | null, complete = broken !== null): ChainStep =>
    ({ headSeq, examined: Number(r.examined), through, complete, broken })
  const at = (seq: number, reason: string, id: string | null = null): ChainStep => step({ id, seq, reason })

  if (from.seq > 0 && r.from_id === null) {
    return at(from.seq, 'the event a previous verification stopped at is missing: the chain was cut short or rewritten')
  }
  if (from.seq > 0 && !sameHash(r.from_hash, from.hash)) {
    return at(from.seq, 'the event differs from when a previous verification stopped at it (its checkpoint): ' +
      'the chain was rewritten', r.from_id)
  }
  if (r.broken_seq !== null) {
    const reason = r.ok_seq === false
      ? 'an event is missing before this one'
      : r.ok_prev === false ? 'the link to the previous event is broken' : 'the event was altered after it was written'
    return at(Number(r.broken_seq), reason, r.broken_id)
  }
  if (r.stray_checkpoint !== null) {
    return at(Number(r.stray_checkpoint), r.stray_event_missing === true
      ? "a checkpoint's event is missing: events were removed or the checkpoint forged"
      : 'a checkpoint does not match its event: the event or the checkpoint was changed')
  }
  // The range ended early (no events after `through` up to its end) or the head is within it: the
  // chain must end here, and its head must say so.
  if (through.seq < end || through.seq >= headSeq) {
    const lastSeq = Number(r.last_seq ?? 0)
    if (lastSeq > through.seq) {
      return lastSeq > headSeq && through.seq >= headSeq
        ? at(headSeq + 1, 'events follow the chain head: the head was moved back')
        : at(through.seq + 1, 'an event is missing before this position')
    }
    if (headSeq !== through.seq || !sameHash(r.head_hash, through.hash)) {
      return headSeq > through.seq
        ? at(through.seq + 1, 'events at the end of the chain are missing')
        : at(through.seq, 'the chain head does not match the last event')
    }
    const newest = Number(r.newest_checkpoint ?? 0)
    if (newest > through.seq) {
      return at(newest, "a checkpoint's event is missing: it lies beyond the end of the chain " +
        '(events were removed or the checkpoint forged)')
    }
    return step(null, true)
  }
  return step(null, false)
}

/** A chain position and its hash (hex) kept outside the database, e.g. from an `audit_appended` log line. */
export interface AuditAnchor {
  seq: number
  hash: string
}

/**
 * The event at anchor.seq must exist, carry anchor.hash, match its own content and link to the event
 * before it: that catches a chain rewritten as a whole (every hash recomputed and the head moved, which
 * needs the owner's rights) and an anchored event edited since, even before a checkpoint. Two index lookups.
 */
export async function checkAuditAnchor (
  trx: Executor,
  scope: { tenantId: string, shard: number },
  anchor: AuditAnchor
): Promise<ChainBreak | null> {
  const { rows: [anchored] } = await sql<{ id: string, hash: Buffer, ok_hash: boolean, ok_prev: boolean }>`
    SELECT e.id, e.hash, e.hash = audit_event_hash(e.prev_hash, e) AS ok_hash,
           e.prev_hash IS NOT DISTINCT FROM (SELECT p.hash FROM audit_events p
             WHERE p.tenant_id = ${scope.tenantId} AND p.shard = ${scope.shard} AND p.seq = e.seq - 1) AS ok_prev
      FROM audit_events e
     WHERE e.tenant_id = ${scope.tenantId} AND e.shard = ${scope.shard} AND e.seq = ${anchor.seq}`.execute(trx)
  if (anchored === undefined) {
    return { id: null, seq: anchor.seq, reason: 'the anchored event is missing: the chain was cut short or rewritten' }
  }
  if (anchored.hash.toString('hex') !== anchor.hash.toLowerCase()) {
    const reason = 'the event differs from the anchor kept outside the database: the chain was rewritten'
    return { id: anchored.id, seq: anchor.seq, reason }
  }
  if (!anchored.ok_hash) {
    return { id: anchored.id, seq: anchor.seq, reason: 'the anchored event was altered after it was written' }
  }
  if (!anchored.ok_prev) return { id: anchored.id, seq: anchor.seq, reason: 'the link to the previous event is broken' }
  return null
}

/** Where a walk that starts at `fromSeq` starts: the event before it, as stored (undefined: missing). */
async function positionBefore (trx: Executor, fromSeq: number): Promise<ChainPosition | undefined> {
  if (fromSeq <= 1) return { seq: 0, hash: null }
  const row = await trx.selectFrom('audit_events').select(['seq', 'hash'])
    .where('seq', '=', String(fromSeq - 1)).executeTakeFirst()
  return row === undefined ? undefined : { seq: Number(row.seq), hash: row.hash }
}

/** The tenant's newest checkpoint: how far its chain has been verified. */
export async function newestAuditCheckpoint (trx: Executor): Promise<ChainPosition | undefined> {
  const row = await trx.selectFrom('audit_checkpoints').select(['seq', 'hash'])
    .orderBy('seq', 'desc').limit(1).executeTakeFirst()
  return row === undefined ? undefined : { seq: Number(row.seq), hash: row.hash }
}

/** Records that the chain holds up to `at` (a concurrent verification may have recorded it already). */
export async function insertAuditCheckpoint (trx: Executor, at: ChainPosition & { hash: Buffer }): Promise<void> {
  await trx.insertInto('audit_checkpoints').values({ seq: at.seq, hash: at.hash })
    .onConflict((oc) => oc.columns(['tenant_id', 'seq']).doNothing()).execute()
}

export interface ChainVerification extends ChainStep {
  /** The checkpoint the verification started from (0: none, it started at the first event). */
  from: number
  /** The checkpoint it recorded, if it made progress and found nothing wrong. */
  recorded: number | null
}

/**
 * The tenant's verification: one bounded step from its newest checkpoint (see verifyChainStep), the
 * anchor check, then a checkpoint where the step stopped when everything held. Events before the
 * starting checkpoint are not re-examined — unless the tenant names where to start (`fromSeq`): then
 * the step starts there, whatever the checkpoints, so a tenant can walk its whole trail itself in
 * bounded calls (1, then verified_through + 1, ...); such a walk records no checkpoint.
 */
export async function verifyAuditChain (
  trx: Executor,
  scope: { tenantId: string, shard: number },
  options: { anchor?: AuditAnchor | undefined, maxEvents?: number, fromSeq?: number | undefined } = {}
): Promise<ChainVerification> {
  const from = options.fromSeq === undefined
    ? await newestAuditCheckpoint(trx) ?? { seq: 0, hash: null }
    : await positionBefore(trx, options.fromSeq)
  if (from === undefined) {
    const seq = options.fromSeq! - 1
    const reason = 'this event is missing: the chain was cut short, or it does not reach this far'
    const broken = { id: null, seq, reason }
    return {
      headSeq: 0,
      examined: 0,
      through: { seq: 0, hash: null },
      complete: true,
      from: seq,
      recorded: null,
      broken,
    }
  }
  const step = await verifyChainStep(trx, scope, from, options.maxEvents ?? VERIFY_STEP_MAX)
  const anchor = options.anchor
  const broken = step.broken ?? (anchor === undefined ? null : await checkAuditAnchor(trx, scope, anchor))
  let recorded: number | null = null
  if (options.fromSeq === undefined && broken === null && step.through.seq > from.seq && step.through.hash !== null) {
    await insertAuditCheckpoint(trx, { seq: step.through.seq, hash: step.through.hash })
    recorded = step.through.seq
  }
  return { ...step, complete: broken === null ? step.complete : true, broken, from: from.seq, recorded }
}
