// `npm run db:setup` (src/ops/setup-cli.ts), with the flag docker-compose.yml's setup service passes. The role
// passwords given are the test server's own, so re-asserting the roles disturbs no other test file.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { withDatabase } from '../../src/ops/bootstrap.ts'
import { query } from '../helpers/db.ts'
import { testDatabaseEnv } from '../helpers/env.ts'
import { runNpmScript } from '../helpers/npm.ts'

const NO_SERVER = { ownerUrl: '', appUrl: '' }

t.test('db:setup creates and migrates a database, and prints its URLs with the given passwords hidden', async (t) => {
  const env = testDatabaseEnv()
  const database = `rowfence_test_setup_${randomBytes(5).toString('hex')}`
  t.teardown(() => query(env.adminUrl, `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`))
  const args = ['--admin-url', env.adminUrl, '--database', database, '--owner-role', env.ownerRole,
    '--url-safe-passwords']
  const passwords = { OWNER_PASSWORD: env.ownerPassword, APP_PASSWORD: env.appPassword }
  const run = await runNpmScript('db:setup', args, NO_SERVER, passwords)
  t.equal(run.code, 0, 'exit 0', { stderr: run.stderr })
  t.match(run.stderr, /roles and database ready; [1-9]\d* migration\(s\) applied/)
  t.match(run.stdout, new RegExp(`^DATABASE_URL=postgres://${env.ownerRole}:\\*\\*\\*@[^/]+/${database}$`, 'm'))
  t.match(run.stdout, new RegExp(`^APP_DATABASE_URL=postgres://app:\\*\\*\\*@[^/]+/${database}$`, 'm'))
  const printed = run.stdout + run.stderr
  t.notOk(printed.includes(env.ownerPassword) || printed.includes(env.appPassword), 'no password is printed')
  const [applied] = await query<{ n: number }>(withDatabase(env.adminUrl, database),
    'SELECT count(*)::int AS n FROM schema_migrations')
  t.ok(applied!.n > 0, `${applied!.n} migrations recorded`)

  const again = await runNpmScript('db:setup', args, NO_SERVER, passwords)
  t.equal(again.code, 0, 'a second run succeeds', { stderr: again.stderr })
  t.match(again.stderr, /roles and database ready; 0 migration\(s\) applied/)
})

t.test('--url-safe-passwords refuses a password a URL would need encoded, before connecting', async (t) => {
  // Nothing listens on port 1: a refusal that came after connecting would be a connection error instead.
  const args = ['--admin-url', 'postgres://nobody@127.0.0.1:1/postgres', '--url-safe-passwords']
  const run = await runNpmScript('db:setup', args, NO_SERVER, { OWNER_PASSWORD: 'p@ss/word', APP_PASSWORD: 'abc123' })
  t.equal(run.code, 1)
  t.match(run.stderr, /^db:setup: OWNER_PASSWORD must be set and hold only .*openssl rand -hex 24$/m)
  t.notMatch(run.stderr, /p@ss\/word/, 'the refused password is not echoed')
})
