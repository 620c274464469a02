// npm run db:setup -- --admin-url postgres://postgres@host/postgres [--database rowfence]
// Creates the owner role, the runtime role `app` and the database on a real server, then migrates.
// Passwords come from OWNER_PASSWORD and APP_PASSWORD, or are generated and printed once.
import { randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { bootstrapDatabase } from '../src/ops/bootstrap.ts'
import { loadConfig } from '../src/config.ts'
import { migrate } from '../src/ops/migrate.ts'
import { databaseTls, tlsFailure } from '../src/db/tls.ts'

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      'admin-url': { type: 'string' },
      database: { type: 'string', default: 'rowfence' },
      'owner-role': { type: 'string', default: 'rowfence_owner' },
    },
  })
  const adminUrl = values['admin-url'] ?? process.env.ADMIN_DATABASE_URL
  if (adminUrl === undefined) throw new Error('pass --admin-url (a superuser or a CREATEROLE+CREATEDB login) or set ADMIN_DATABASE_URL')
  // TLS as the server will use it; the admin URL stands in for both URLs, so the same rules apply to it.
  const { DATABASE_SSL_MODE, DATABASE_SSL_CA_FILE } = process.env
  const tls = databaseTls(loadConfig({
    DATABASE_SSL_MODE, DATABASE_SSL_CA_FILE, DATABASE_URL: adminUrl, APP_DATABASE_URL: adminUrl,
  }))
  const generated = process.env.OWNER_PASSWORD === undefined || process.env.APP_PASSWORD === undefined
  const urls = await bootstrapDatabase({
    adminUrl,
    database: values.database,
    ownerRole: values['owner-role'],
    ownerPassword: process.env.OWNER_PASSWORD ?? randomBytes(24).toString('base64url'),
    appPassword: process.env.APP_PASSWORD ?? randomBytes(24).toString('base64url'),
    tls,
  }).catch((error: unknown) => { throw tlsFailure(error, tls) ?? error })
  const result = await migrate(urls.ownerUrl, { log: (line) => console.error(line), tls })
  console.error(`roles and database ready; ${result.applied.length} migration(s) applied`)
  if (generated) console.error('passwords were generated: keep these URLs, they are not shown again')
  console.log(`DATABASE_URL=${urls.ownerUrl}`)
  console.log(`APP_DATABASE_URL=${urls.appUrl}`)
}

main().catch((error: unknown) => {
  console.error(`db:setup: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
})
