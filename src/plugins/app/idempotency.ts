import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { sql } from 'kysely'
import { badRequest, conflict } from '../../errors.ts'

/**
 * Idempotency keys on tenant POSTs (`idempotency-key` header), kept per tenant for 24 hours.
 *
 * The key row is inserted at the start of the request's own transaction and completed with the
 * response just before it commits, so the key and the work commit together or not at all:
 * - same key, same request (method, path and body, compared canonically): the stored status and
 *   body are replayed without doing the work again (`idempotent-replayed: true`);
 * - same key, different request: 409;
 * - two at once: the second blocks on the unique key until the first commits (then replays it) or
 *   rolls back (then does the work itself);
 * - a request that fails (4xx/5xx) rolls back, key included, so it can be retried as it is.
 * Routes whose response holds a secret (a new API key) declare `idempotency: 'no-replay'`: their
 * response is not stored, and a repeat is a 409 instead of a replay.
 */

declare module 'fastify' {
  interface FastifyContextConfig {
    idempotency?: 'replay' | 'no-replay'
  }
}

const KEY = /^[\x21-\x7e]{1,255}$/
/** Expired keys of the tenant removed, in passing, by each keyed request. */
const SWEEP_BATCH = 50

/** JSON with object keys sorted at every level, so equal bodies hash equally. */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value).sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
    return `{${entries.join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/** No body and `{}` are the same request: a client may send either on a retry. */
const isEmptyObject = (value: unknown): boolean =>
  value !== null && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length === 0

function fingerprint (request: FastifyRequest): Buffer {
  const path = request.url.split('?')[0]
  const body = request.body === undefined || isEmptyObject(request.body) ? null : request.body
  return createHash('sha256').update(`${request.method} ${path}\n${canonicalJson(body)}`).digest()
}

async function idempotency (fastify: FastifyInstance): Promise<void> {
  fastify.addHook('preHandler', async (request: FastifyRequest, reply: FastifyReply) => {
    if (request.method !== 'POST') return
    const header = request.headers['idempotency-key']
    if (header === undefined) return
    if (typeof header !== 'string' || !KEY.test(header)) {
      throw badRequest('idempotency-key must be 1 to 255 visible ASCII characters, sent once',
        [{ path: 'headers/idempotency-key', message: 'is invalid' }])
    }
    const trx = request.db
    const print = fingerprint(request)
    // This key if it has expired (it may then be used afresh), and a few other expired ones in passing.
    const now = sql<Date>`now()`
    await trx.deleteFrom('idempotency_keys')
      .where((eb) => eb.or([
        eb.and([eb('key', '=', header), eb('expires_at', '<', now)]),
        eb(sql`ctid`, 'in', eb.selectFrom('idempotency_keys').select(sql`ctid`.as('ctid'))
          .where('expires_at', '<', now).limit(SWEEP_BATCH)),
      ]))
      .execute()
    const inserted = await trx.insertInto('idempotency_keys')
      .values({ key: header, fingerprint: print })
      .onConflict((oc) => oc.columns(['tenant_id', 'key']).doNothing())
      .returning('key')
      .executeTakeFirst()
    if (inserted !== undefined) {
      const store = request.routeOptions.config.idempotency !== 'no-replay'
      request.beforeCommit!.push(async (status, payload) => {
        await trx.updateTable('idempotency_keys')
          .set({ status, response: store ? (typeof payload === 'string' ? payload : '') : null })
          .where('key', '=', header)
          .execute()
      })
      return
    }
    const stored = await trx.selectFrom('idempotency_keys').select(['fingerprint', 'status', 'response'])
      .where('key', '=', header).executeTakeFirstOrThrow()
    if (!stored.fingerprint.equals(print)) {
      throw conflict('this idempotency-key was already used with a different request', 'idempotency-key-reuse')
    }
    if (stored.status === null || stored.response === null) {
      throw conflict('this request was already processed; its response held a secret that is shown only once',
        'idempotency-already-processed')
    }
    request.log.info({ idempotencyKey: header }, 'replaying the stored response of an idempotent request')
    reply.code(stored.status).header('idempotent-replayed', 'true')
    if (stored.response === '') return reply.send()
    return reply.type('application/json; charset=utf-8').send(stored.response)
  })
}

export default fp(idempotency, { name: 'idempotency', dependencies: ['tenant-context'] })
