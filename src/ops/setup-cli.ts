// `npm run db:setup` (scripts/setup-db.ts) and, compiled, `node dist/ops/setup-cli.js` in the image:
// creates the owner role, the runtime role `app` and the database on a real server, then migrates.
// It lives in src/ so that the image runs it compiled, like the server.
import { randomBytes } from 'node:crypto'
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { loadConfig } from '../config.ts'
import { databaseTls, tlsFailure } from '../db/tls.ts'
import { bootstrapDatabase } from './bootstrap.ts'
import { migrate } from './migrate.ts'

export const SETUP_USAGE = `usage: db:setup [--admin-url URL] [--database rowfence] [--owner-role rowfence_owner]
  [--url-safe-passwords]
The admin login (a superuser, or CREATEROLE+CREATEDB) comes from --admin-url or ADMIN_DATABASE_URL; its
password may instead be in PGPASSWORD. Passwords come from OWNER_PASSWORD and APP_PASSWORD, or are generated.`

/** Characters a URL carries as they are: a password made only of these needs no percent-encoding. */
const URL_SAFE = /^[A-Za-z0-9._~-]+$/

/** The URL with its password hidden: the caller gave that password, so printing it would only leak it. */
function redacted (url: string): string {
  const parsed = new URL(url)
  parsed.password = '***'
  return parsed.toString()
}

export interface SetupOutput {
  out: (line: string) => void
  err: (line: string) => void
}

/**
 * Sets up the database and prints DATABASE_URL= and APP_DATABASE_URL= on stdout. A password that was
 * generated is printed (once: it is needed); one that came from the environment is shown as `***`,
 * so logs of a deployment (docker compose) never hold it.
 */
export async function setupDatabase (
  argv: string[], env: NodeJS.ProcessEnv, output: SetupOutput = { out: console.log, err: console.error }
): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'admin-url': { type: 'string' },
      database: { type: 'string', default: 'rowfence' },
      'owner-role': { type: 'string', default: 'rowfence_owner' },
      'url-safe-passwords': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  })
  if (values.help) {
    output.out(SETUP_USAGE)
    return
  }
  const adminUrl = values['admin-url'] ?? env.ADMIN_DATABASE_URL
  if (adminUrl === undefined || adminUrl === '') {
    throw new Error('pass --admin-url (a superuser or a CREATEROLE+CREATEDB login) or set ADMIN_DATABASE_URL')
  }
  const given = { owner: env.OWNER_PASSWORD ?? '', app: env.APP_PASSWORD ?? '' }
  // docker-compose.yml pastes the passwords into the API's URLs and compose cannot percent-encode:
  // refuse here, before any role has the password, rather than let the API fail to log in.
  if (values['url-safe-passwords']) {
    for (const [name, value] of [['OWNER_PASSWORD', given.owner], ['APP_PASSWORD', given.app]] as const) {
      if (!URL_SAFE.test(value)) {
        throw new Error(`${name} must be set and hold only A-Z a-z 0-9 . _ ~ - (it is pasted into a URL): ` +
          'generate one with openssl rand -hex 24')
      }
    }
  }
  // TLS as the server will use it; the admin URL stands in for both URLs, so the same rules apply to it.
  const { DATABASE_SSL_MODE, DATABASE_SSL_CA_FILE } = env
  const tls = databaseTls(loadConfig({
    DATABASE_SSL_MODE, DATABASE_SSL_CA_FILE, DATABASE_URL: adminUrl, APP_DATABASE_URL: adminUrl,
  }))
  const urls = await bootstrapDatabase({
    adminUrl,
    database: values.database,
    ownerRole: values['owner-role'],
    ownerPassword: given.owner !== '' ? given.owner : randomBytes(24).toString('base64url'),
    appPassword: given.app !== '' ? given.app : randomBytes(24).toString('base64url'),
    tls,
  }).catch((error: unknown) => { throw tlsFailure(error, tls) ?? error })
  const result = await migrate(urls.ownerUrl, { log: output.err, tls })
  output.err(`roles and database ready; ${result.applied.length} migration(s) applied`)
  if (given.owner === '' || given.app === '') {
    output.err('a generated password is shown in full below: keep it, it is not shown again')
  }
  output.out(`DATABASE_URL=${given.owner === '' ? urls.ownerUrl : redacted(urls.ownerUrl)}`)
  output.out(`APP_DATABASE_URL=${given.app === '' ? urls.appUrl : redacted(urls.appUrl)}`)
}

/** Exit status and one line on failure, for both entry points. */
export function runSetupCli (argv: string[]): void {
  setupDatabase(argv, process.env).catch((error: unknown) => {
    console.error(`db:setup: ${error instanceof Error ? error.message : String(error)}`)
    process.exit(1) // a connection that failed half-way may still hold the event loop open
  })
}

// Run when this file is the program (node dist/ops/setup-cli.js); scripts/setup-db.ts calls runSetupCli.
function isProgram (): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false // argv[1] names no file (node -e, a REPL)
  }
}
if (isProgram()) runSetupCli(process.argv.slice(2))
