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
export async function insertAuditEvent (trx: Executor, event: Omit<Insertable<AuditEvents>, 'tenant_id' | 'shard' | 'occurred_at' | 'seq' | 'hash' | 'prev_hash'>): Promise<AppendedAuditEvent> {
  const row = await trx.insertInto('audit_events').values(event).returning(['seq', 'hash']).executeTakeFirstOrThrow()
  return { seq: Number(row.seq), hash: row.hash.toString('hex') }
}

export async function listAuditEvents (trx: Executor, page: { limit: number, before?: string | undefined }): Promise<AuditEventRow[]> {
  let query = trx.selectFrom('audit_events').selectAll().orderBy('id', 'desc').limit(page.limit)
  if (page.before !== undefined) query = query.where('id', '<', page.before)
  return query.execute()
}

export interface ChainVerification {
  events: number
  /** The first event (in chain order) whose link does not hold, and why. */
  broken: { id: string | null, seq: number, reason: string } | null
}

/** A chain position and its hash (hex) kept outside the database, e.g. from an `audit_appended` log line. */
export interface AuditAnchor {
  seq: number
  hash: string
}

/**
 * Recomputes the tenant's chain in the database: every event's hash must match its content and its
 * predecessor's hash, seq must run 1, 2, 3... without gaps, and the head must point at the last event.
 * That catches a change to some events; a chain rewritten as a whole (every hash recomputed and the
 * head moved, which needs the owner's rights) is only caught against an anchor kept elsewhere: the
 * event at anchor.seq must exist and carry anchor.hash.
 */
export async function verifyAuditChain (trx: Executor, scope: { tenantId: string, shard: number }, anchor?: AuditAnchor): Promise<ChainVerification> {
  // Raw SQL (window functions): the tenant predicates are written here, the plugin cannot add them.
  const { rows: [first] } = await sql<{ id: string, seq: string, ok_hash: boolean, ok_prev: boolean, ok_seq: boolean }>`
    SELECT id, seq, ok_hash, ok_prev, ok_seq FROM (
      SELECT e.id, e.seq,
             e.hash = audit_event_hash(e.prev_hash, e) AS ok_hash,
             e.prev_hash IS NOT DISTINCT FROM lag(e.hash) OVER w AS ok_prev,
             e.seq = coalesce(lag(e.seq) OVER w, 0) + 1 AS ok_seq
        FROM audit_events e
       WHERE e.tenant_id = ${scope.tenantId} AND e.shard = ${scope.shard}
      WINDOW w AS (ORDER BY e.seq)
    ) links
    WHERE NOT (ok_hash AND ok_prev AND ok_seq)
    ORDER BY seq
    LIMIT 1`.execute(trx)
  const { rows: [summary] } = await sql<{ events: string, last_seq: string | null, last_hash: Buffer | null, head_seq: string | null, head_hash: Buffer | null }>`
    SELECT (SELECT count(*) FROM audit_events WHERE tenant_id = ${scope.tenantId} AND shard = ${scope.shard}) AS events,
           last.seq AS last_seq, last.hash AS last_hash, h.seq AS head_seq, h.hash AS head_hash
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (SELECT seq, hash FROM audit_events WHERE tenant_id = ${scope.tenantId} AND shard = ${scope.shard}
                          ORDER BY seq DESC LIMIT 1) last ON true
      LEFT JOIN audit_heads h ON h.tenant_id = ${scope.tenantId}`.execute(trx)
  const events = Number(summary!.events)
  if (first !== undefined) {
    const reason = !first.ok_seq ? 'an event is missing before this one' : !first.ok_prev ? 'the link to the previous event is broken' : 'the event was altered after it was written'
    return { events, broken: { id: first.id, seq: Number(first.seq), reason } }
  }
  const headMatches = summary!.head_seq === summary!.last_seq &&
    (summary!.head_hash === null ? summary!.last_hash === null : summary!.last_hash?.equals(summary!.head_hash) === true)
  if (!headMatches) {
    return { events, broken: { id: null, seq: Number(summary!.last_seq ?? 0) + 1, reason: 'events at the end of the chain are missing' } }
  }
  if (anchor !== undefined) {
    const { rows: [anchored] } = await sql<{ id: string, hash: Buffer }>`
      SELECT id, hash FROM audit_events WHERE tenant_id = ${scope.tenantId} AND shard = ${scope.shard} AND seq = ${anchor.seq}`.execute(trx)
    if (anchored === undefined) {
      return { events, broken: { id: null, seq: anchor.seq, reason: 'the anchored event is missing: the chain was cut short or rewritten' } }
    }
    if (anchored.hash.toString('hex') !== anchor.hash.toLowerCase()) {
      return { events, broken: { id: anchored.id, seq: anchor.seq, reason: 'the event differs from the anchor kept outside the database: the chain was rewritten' } }
    }
  }
  return { events, broken: null }
}
