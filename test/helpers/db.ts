import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { APP_ROLE, urlFor, withDatabase } from '../../src/ops/bootstrap.ts'
import { testDatabaseEnv } from './env.ts'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface TestDatabase {
  name: string
  /** Superuser on this database: for setting up attacks and inspecting state, never for the app. */
  adminUrl: string
  /** Owner role (DATABASE_URL). */
  ownerUrl: string
  /** Runtime role `app` (APP_DATABASE_URL). */
  appUrl: string
}

/** Runs a statement (or a batch) on a fresh connection and returns the rows of its last SELECT. */
export async function query<R extends pg.QueryResultRow = Record<string, unknown>> (
  url: string,
  text: string,
  values: unknown[] = []
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const result = await client.query<R>(text, values) as pg.QueryResult<R> | Array<pg.QueryResult<R>>
    if (!Array.isArray(result)) return result.rows
    return (result.filter((r) => r.command === 'SELECT').at(-1) ?? result.at(-1))?.rows ?? []
  } finally {
    await client.end()
  }
}

/**
 * A database of this test file's own, cloned from the migrated template and dropped at teardown,
 * so test files can run in parallel and never depend on each other's data.
 */
export async function createTestDatabase (t: Teardown, options: { empty?: boolean } = {}): Promise<TestDatabase> {
  const env = testDatabaseEnv()
  const name = `rowfence_test_${randomBytes(6).toString('hex')}`
  const admin = new pg.Client({ connectionString: env.adminUrl })
  await admin.connect()
  try {
    const db = admin.escapeIdentifier(name)
    // empty: no migrations applied yet (template0 is a pristine cluster template).
    const template = options.empty === true ? 'template0' : env.template
    await admin.query(`CREATE DATABASE ${db} TEMPLATE ${admin.escapeIdentifier(template)} ` +
      `OWNER ${admin.escapeIdentifier(env.ownerRole)}`)
    // Database-level privileges are not copied from the template: restate them as the bootstrap does.
    await admin.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`)
    await admin.query(`GRANT CONNECT ON DATABASE ${db} TO ${admin.escapeIdentifier(APP_ROLE)}`)
  } finally {
    await admin.end()
  }
  t.teardown(async () => {
    await query(env.adminUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
  })
  if (options.empty === true) {
    await query(withDatabase(env.adminUrl, name), `ALTER SCHEMA public OWNER TO ${env.ownerRole}`)
  }
  return {
    name,
    adminUrl: withDatabase(env.adminUrl, name),
    ownerUrl: urlFor(env.adminUrl, env.ownerRole, env.ownerPassword, name),
    appUrl: urlFor(env.adminUrl, APP_ROLE, env.appPassword, name),
  }
}

/** A LOGIN role of the test's own with the given attributes, dropped at teardown. */
export async function createRole (t: Teardown, database: TestDatabase, attributes: string): Promise<string> {
  const role = `rowfence_test_role_${randomBytes(5).toString('hex')}`
  const password = randomBytes(12).toString('hex')
  await query(database.adminUrl, `CREATE ROLE ${role} LOGIN PASSWORD '${password}' ${attributes}; ` +
    `GRANT CONNECT ON DATABASE "${database.name}" TO ${role}`)
  t.teardown(async () => {
    await query(database.adminUrl, `DROP OWNED BY ${role}; DROP ROLE IF EXISTS ${role}`).catch(() => {})
  })
  return urlFor(database.adminUrl, role, password, database.name)
}
