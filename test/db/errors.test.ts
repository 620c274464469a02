import t from 'tap'
import pg from 'pg'
import { problemFromDatabaseError } from '../../src/db/errors.ts'
import { createTestDatabase } from '../helpers/db.ts'

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
  t.notMatch(JSON.stringify(problemFromDatabaseError(text)?.toJSON()), /UTF8|0x00|22021/, 'nothing from the database in the problem')
})
