import { PassThrough } from 'node:stream'
import t from 'tap'
import pg from 'pg'
import { problemFromDatabaseError } from '../../src/db/errors.ts'
import { as, buildTestApp } from '../helpers/app.ts'
import { createTestDatabase, query } from '../helpers/db.ts'
import { onboard, shardOf } from '../helpers/operator.ts'

async function failure (url: string, text: string, values: unknown[]): Promise<unknown> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query(text, values)
    return undefined
  } catch (error) {
    return error
  } finally {
    await client.end()
  }
}

t.test('a NUL byte that reaches PostgreSQL is a 400 problem, not a 500', async (t) => {
  const db = await createTestDatabase(t)
  const text = await failure(db.appUrl, 'SELECT $1::text AS v', ['a\u0000b'])
  t.match(text, { code: '22021' }, 'text cannot hold NUL')
  t.match(problemFromDatabaseError(text), { status: 400 })
  const json = await failure(db.appUrl, 'SELECT $1::jsonb AS v', [JSON.stringify({ name: 'a\u0000b' })])
  t.match(json, { code: '22P05' }, 'nor can jsonb')
  t.match(problemFromDatabaseError(json), { status: 400 })
  t.notMatch(JSON.stringify(problemFromDatabaseError(text)?.toJSON()), /UTF8|0x00|22021/,
    'nothing from the database in the problem')
})

/** A pg DatabaseError as the driver raises it (code, message, detail and constraint are all it reads). */
const pgError = (fields: { code: string, message: string, detail?: string, constraint?: string }): Error =>
  Object.assign(new Error(fields.message), { name: 'error', severity: 'ERROR', ...fields })

t.test('a row no partition accepts is a 500 left to the error handler, ' +
  'while a failed check constraint stays a 400', async (t) => {
  const noPartition = pgError({
    code: '23514',
    message: 'no partition of relation "invoices" found for row',
    detail: 'Partition key of the failing row contains (shard) = (17).',
  })
  t.equal(problemFromDatabaseError(noPartition), undefined,
    'not a client error: the error handler answers a logged, generic 500')
  const check = pgError({
    code: '23514',
    message: 'new row for relation "invoice_lines" violates check constraint "invoice_lines_amount_check"',
    constraint: 'invoice_lines_amount_check',
  })
  t.match(problemFromDatabaseError(check), { status: 400, detail: 'a value is invalid or out of range' })
})

t.test("a dedicated tenant's write into a missing partition is a 500 problem that names nothing internal, " +
  'and is logged', async (t) => {
  const lines: Array<{ level: number, reqId?: string, msg?: string, err?: { message?: string } }> = []
  const logStream = new PassThrough()
  logStream.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (line !== '') lines.push(JSON.parse(line) as typeof lines[number])
    }
  })
  const ctx = await buildTestApp(t, { LOG_LEVEL: 'error' }, undefined, { logStream })
  const tenant = await onboard(ctx, 'partition-lost', 'dedicated')
  const shard = await shardOf(ctx, tenant.id)
  await query(ctx.db.adminUrl,
    `ALTER TABLE audit_events DETACH PARTITION audit_events_s${shard}; DROP TABLE audit_events_s${shard}`)
  // Creating a customer writes its audit event, which has nowhere to go.
  const res = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'Ada' },
    headers: { 'x-request-id': 'lost-row' },
  }))
  t.equal(res.statusCode, 500)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(res.json(), { status: 500, detail: /quote request id lost-row/ })
  t.notMatch(res.body, /partition|audit_events|shard|23514/, 'nothing from the database in the response')
  t.match(lines.filter((l) => l.reqId === 'lost-row' && l.level >= 50),
    [{ err: { message: 'no partition of relation "audit_events" found for row' } }],
    'logged as an error, with the database message')
  t.same(await query(ctx.db.adminUrl, 'SELECT 1 FROM customers WHERE tenant_id = $1', [tenant.id]), [],
    'nothing was written')
})
