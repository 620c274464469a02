import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { createTestDatabase, query, type TestDatabase } from '../helpers/db.ts'
import { runNpmScript } from '../helpers/npm.ts'
import { operator } from '../helpers/operator.ts'
import { reviewAttack } from '../helpers/export-attack.ts'

// The signature of an export as an operator meets it: `npm run import` refusing a tampered file, and
// where the key comes from (configured, generated in development, required in production).

const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-signing-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

// Load shedding is not under test (a busy machine, several CLIs at once, would trip it).
const unshed = { MAX_EVENT_LOOP_DELAY_MS: 0 }
const source = await buildTestApp(t, unshed)
const tenant = await provisionTenant(source, 'signed-export')
await source.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Ada' } }))
const exportUrl = `/admin/v1/tenants/${tenant.id}/export`
const exported = (await source.app.inject({ method: 'GET', url: exportUrl, headers: operator(source) })).body

/** Refused with a one-line message and a non-zero exit, nothing of the tenant written (in the database returned). */
async function refused (
  t: Test, file: string, message: RegExp, env: Record<string, string> = {}, args: string[] = []
): Promise<TestDatabase> {
  const targetDb = await createTestDatabase(t)
  const run = await runNpmScript('import', ['--file', file, '--placement', 'dedicated', ...args], targetDb, env)
  t.not(run.code, 0, 'a non-zero exit')
  t.match(run.stderr, message)
  t.notMatch(run.stderr, /imported tenant/)
  t.same(await query(targetDb.adminUrl, 'SELECT id FROM tenants'), [], 'no tenant')
  t.same(await query(targetDb.adminUrl, 'SELECT id FROM api_keys'), [], 'no key')
  t.same(await query(targetDb.adminUrl, 'SELECT 1 FROM shard_reservations'), [], 'no shard reserved')
  return targetDb
}

t.test('the review\'s attack (no chain head, an edited audit event, a planted owner key) is refused', async (t) => {
  // An api_keys row with a secret the attacker knows, owner rights and every scope.
  const lines = exported.trimEnd().split('\n')
  const { attacked, planted } = reviewAttack(lines, tenant.id)
  t.equal(attacked.length, lines.length, 'as many lines as the export: one dropped, one added')
  t.ok(attacked.some((l) => l.includes('"action":"customer.deleted"')), 'an audit event edited')
  const withTrailer = path.join(dir, 'attack.ndjson')
  await writeFile(withTrailer, attacked.map((l) => `${l}\n`).join(''))
  const targetDb = await refused(t, withTrailer,
    new RegExp('^rowfence import: the export\'s signature does not match: it was altered, or signed with another ' +
      'EXPORT_SIGNING_KEY$', 'm'))
  // Without its trailer, and let in unsigned: test/db/export-signature.test.ts.

  const target = await buildTestApp(t, unshed, targetDb)
  const res = await target.app.inject({ url: '/v1/tenant', headers: { authorization: `Bearer ${planted.key}` } })
  t.equal(res.statusCode, 401, 'the planted key opens nothing')
})

t.test('without EXPORT_SIGNING_KEY, production refuses to export or import', async (t) => {
  const production = { NODE_ENV: 'production', EXPORT_SIGNING_KEY: '', ADMIN_TOKEN: 'x'.repeat(32) }
  const run = await runNpmScript('export', ['--tenant', tenant.id], source.db, production)
  t.equal(run.code, 1)
  t.equal(run.stdout, '', 'nothing unsigned leaves')
  t.match(run.stderr,
    /^rowfence export: EXPORT_SIGNING_KEY is not set: exports are signed with it and imports verified/m)
  const file = path.join(dir, 'for-production.ndjson')
  await writeFile(file, exported)
  await refused(t, file, /^rowfence import: EXPORT_SIGNING_KEY is not set/m, production)
  const keyless = await buildTestApp(t, { ...unshed, EXPORT_SIGNING_KEY: undefined })
  const res = await keyless.app.inject({ method: 'GET', url: exportUrl, headers: operator(keyless) })
  t.equal(res.statusCode, 503)
  t.match(res.headers['content-type'], /application\/problem\+json/)
  t.match(res.json(), { detail: /^tenant exports are off: EXPORT_SIGNING_KEY is not set/ })
})

t.test('outside production, export and import share a key generated once into DATA_DIR', async (t) => {
  const dataDir = path.join(dir, 'dev-data')
  const development = { NODE_ENV: 'development', EXPORT_SIGNING_KEY: '', DATA_DIR: dataDir }
  const run = await runNpmScript('export', ['--tenant', tenant.id], source.db, development)
  t.equal(run.code, 0, run.stderr)
  const generated = (await readFile(path.join(dataDir, 'export-signing-key'), 'utf8')).trim()
  t.ok(generated.length >= 43, 'a generated key, kept in DATA_DIR')
  t.not(run.stdout, exported, 'signed with that key, not the test apps\' one')
  const file = path.join(dir, 'dev.ndjson')
  await writeFile(file, run.stdout)
  const targetDb = await createTestDatabase(t)
  const imported = await runNpmScript('import', ['--file', file], targetDb, development)
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.stdout, new RegExp(`imported tenant ${tenant.id}`))
})
