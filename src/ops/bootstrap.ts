import pg from 'pg'
import { connectionOptions, PLAINTEXT, type DatabaseTls } from '../db/tls.ts'

/** The runtime role's name is part of the schema: migrations grant to it by name. */
export const APP_ROLE = 'app'
export const DEFAULT_OWNER_ROLE = 'rowfence_owner'

export interface BootstrapOptions {
  /** A superuser, or a role with CREATEROLE and CREATEDB. Used only here, never by the server. */
  adminUrl: string
  database: string
  ownerPassword: string
  appPassword: string
  ownerRole?: string
  tls?: DatabaseTls
}

export interface DatabaseUrls {
  /** DATABASE_URL: the owner, for migrations and operator work. */
  ownerUrl: string
  /** APP_DATABASE_URL: the runtime role. */
  appUrl: string
}

/** Builds a URL for another role and database on the server that `baseUrl` points at. */
export function urlFor (baseUrl: string, user: string, password: string, database: string): string {
  const url = new URL(withDatabase(baseUrl, database))
  url.username = encodeURIComponent(user)
  url.password = encodeURIComponent(password)
  return url.toString()
}

/** The same login on another database. */
export function withDatabase (baseUrl: string, database: string): string {
  const url = new URL(baseUrl)
  url.pathname = `/${encodeURIComponent(database)}`
  return url.toString()
}

/**
 * Creates (or re-asserts) the two roles and the database, idempotently:
 * - the owner: LOGIN, owns the database and its public schema, not a superuser, cannot bypass RLS;
 * - `app`: LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE, owns nothing, and is given its DML
 *   grants by the migrations.
 * Existing roles get their attributes re-asserted, so a role that was widened by hand is narrowed again.
 */
export async function bootstrapDatabase (options: BootstrapOptions): Promise<DatabaseUrls> {
  const owner = options.ownerRole ?? DEFAULT_OWNER_ROLE
  const tls = options.tls ?? PLAINTEXT
  const admin = new pg.Client({ ...connectionOptions(options.adminUrl, tls), application_name: 'rowfence-bootstrap' })
  await admin.connect()
  try {
    const ident = (name: string): string => admin.escapeIdentifier(name)
    const literal = (value: string): string => admin.escapeLiteral(value)
    const ensureRole = async (role: string, password: string, attributes: string): Promise<void> => {
      const exists = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role])
      const verb = exists.rowCount === 0 ? 'CREATE' : 'ALTER'
      await admin.query(`${verb} ROLE ${ident(role)} WITH ${attributes} PASSWORD ${literal(password)}`)
    }
    const narrow = 'LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION'
    await ensureRole(owner, options.ownerPassword, narrow)
    await ensureRole(APP_ROLE, options.appPassword, `${narrow} INHERIT`)

    const db = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [options.database])
    if (db.rowCount === 0) {
      await admin.query(`CREATE DATABASE ${ident(options.database)} OWNER ${ident(owner)}`)
    } else {
      await admin.query(`ALTER DATABASE ${ident(options.database)} OWNER TO ${ident(owner)}`)
    }
    // Only the two roles may connect; nobody may create temporary objects there but the owner.
    await admin.query(`REVOKE ALL ON DATABASE ${ident(options.database)} FROM PUBLIC`)
    await admin.query(`GRANT CONNECT ON DATABASE ${ident(options.database)} TO ${ident(APP_ROLE)}`)
  } finally {
    await admin.end()
  }

  // PostgreSQL 15 gives the public schema to pg_database_owner; older clusters (and some images)
  // leave it with the bootstrap superuser, so hand it to the owner explicitly.
  const inDb = new pg.Client({
    ...connectionOptions(withDatabase(options.adminUrl, options.database), tls), application_name: 'rowfence-bootstrap',
  })
  await inDb.connect()
  try {
    await inDb.query(`ALTER SCHEMA public OWNER TO ${inDb.escapeIdentifier(owner)}`)
  } finally {
    await inDb.end()
  }

  return {
    ownerUrl: urlFor(options.adminUrl, owner, options.ownerPassword, options.database),
    appUrl: urlFor(options.adminUrl, APP_ROLE, options.appPassword, options.database),
  }
}
