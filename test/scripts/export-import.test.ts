import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'
import { createTestDatabase, query } from '../helpers/db.ts'
import { runNpmScript } from '../helpers/npm.ts'
import { operator } from '../helpers/operator.ts'

// `npm run export` and `npm run import` as an operator runs them: child processes, configured by
// the environment, progress on stderr, an exit code that says whether it worked. They are aliases of
// `rowfence export` and `rowfence import` (src/cli/data.ts; test/cli/ runs the CLI itself).

const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-cli-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

// Load shedding is not under test (a busy machine, several CLIs at once, would trip it).
const unshed = { MAX_EVENT_LOOP_DELAY_MS: 0 }
const source = await buildTestApp(t, unshed)
const tenant = await provisionTenant(source, 'cli-exported')
const customer = (await source.app.inject(as(tenant, {
  method: 'POST', url: '/v1/customers', payload: { name: 'Ada' },
}))).json<{ id: string }>()
for (let i = 0; i < 3; i++) {
  const lines = [{ description: `line ${i}`, quantity: 2, unit_amount_cents: 150 }]
  await source.app.inject(as(tenant, {
    method: 'POST', url: '/v1/invoices', payload: { customer_id: customer.id, currency: 'EUR', lines },
  }))
}
const viaHttp = await exportOf(source, tenant.id)

async function exportOf (c: TestApp, id: string): Promise<string> {
  return (await c.app.inject({ method: 'GET', url: `/admin/v1/tenants/${id}/export`, headers: operator(c) })).body
}

t.test('npm run export writes the NDJSON to stdout and its progress to stderr', async (t) => {
  const run = await runNpmScript('export', ['--tenant', tenant.id], source.db)
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stdout, viaHttp, 'stdout holds exactly the export, the same as the operator API serves')
  t.match(run.stderr, /export .*100% \| (\d+)\/\1 rows \| 0s left/, 'a progress bar, on stderr, ending full')
  t.notMatch(run.stderr, /\{eta/, 'with a real ETA')
  t.match(run.stderr, new RegExp(`exported \\d+ rows of tenant ${tenant.id}`))
  // The export acts as the owner only: DATABASE_URL alone is enough.
  const ownerOnly = await runNpmScript('export', ['--tenant', tenant.id], source.db, { APP_DATABASE_URL: '' })
  t.equal(ownerOnly.code, 0, ownerOnly.stderr)
  t.equal(ownerOnly.stdout, viaHttp, 'the same export with DATABASE_URL alone')
})

t.test('npm run export --out writes the file; a bad tenant is a non-zero exit with a clear message', async (t) => {
  const file = path.join(dir, 'out.ndjson')
  const run = await runNpmScript('export', ['--tenant', tenant.id, '--out', file], source.db)
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stdout, '')
  t.match(run.stderr, new RegExp(`^exported \\d+ rows of tenant ${tenant.id} to ${file} \\(peak RSS`, 'm'))
  t.equal(await readFile(file, 'utf8'), viaHttp)
  const missing = await runNpmScript('export', ['--tenant', '0190a6d2-0000-7000-8000-000000000000'], source.db)
  t.equal(missing.code, 3, 'not found')
  t.match(missing.stderr, /^rowfence export: tenant 0190a6d2-0000-7000-8000-000000000000 not found$/m)
  const unknownSlug = await runNpmScript('export', ['--tenant', 'nope'], source.db)
  t.equal(unknownSlug.code, 3, 'a slug that names no tenant: not found')
  t.match(unknownSlug.stderr, /^rowfence export: no tenant with slug nope$/m)
})

t.test('npm run import loads an export into another deployment, and refuses where the tenant exists', async (t) => {
  const file = path.join(dir, 'tenant.ndjson')
  await writeFile(file, viaHttp)
  const targetDb = await createTestDatabase(t)
  const run = await runNpmScript('import', ['--file', file, '--placement', 'dedicated'], targetDb)
  t.equal(run.code, 0, run.stderr)
  t.match(run.stderr, /import .*100% \| (\d+)\/\1 rows/, 'a progress bar, on stderr, ending at every row')
  t.match(run.stdout, new RegExp(`^imported tenant ${tenant.id} \\(dedicated\\)`))
  const target = await buildTestApp(t, unshed, targetDb)
  t.equal(await exportOf(target, tenant.id), viaHttp, 'export → import → export is identical')
  t.equal((await target.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices' }))).statusCode, 200,
    'and the key works there')
  t.same(await query(targetDb.adminUrl, 'SELECT shard FROM shard_reservations'), [],
    'the dedicated shard was handed over')

  const again = await runNpmScript('import', ['--file', file], targetDb)
  t.equal(again.code, 4, 'importing over an existing tenant is refused')
  t.match(again.stderr, /^rowfence import: a tenant with id .* already exists here$/m)
})

t.test('npm run import refuses a bad file with a non-zero exit and a clear message, writing nothing', async (t) => {
  const targetDb = await createTestDatabase(t)
  const partitions = async (): Promise<number> =>
    (await query(targetDb.adminUrl, "SELECT 1 FROM pg_class WHERE relispartition AND relkind = 'r'")).length
  const partitionsBefore = await partitions()
  const garbage = path.join(dir, 'garbage.ndjson')
  await writeFile(garbage, 'this is not an export\n')
  const unsigned = await runNpmScript('import', ['--file', garbage], targetDb)
  t.equal(unsigned.code, 4)
  t.match(unsigned.stderr, /^rowfence import: the export is not signed \(its last line is no signature trailer\)/m)
  const absent = await runNpmScript('import', ['--file', path.join(dir, 'absent.ndjson')], targetDb)
  t.equal(absent.code, 2)
  t.match(absent.stderr, /^rowfence import: cannot read .*absent\.ndjson: no such file$/m)
  // An altered export is refused before anything is written: no dedicated shard is even created.
  const altered = path.join(dir, 'altered.ndjson')
  await writeFile(altered, viaHttp.replace(/"action":"customer\.created"/, '"action":"customer.deleted"'))
  const tampered = await runNpmScript('import', ['--file', altered, '--placement', 'dedicated'], targetDb)
  t.equal(tampered.code, 4)
  t.match(tampered.stderr,
    new RegExp('^rowfence import: the export\'s signature does not match: it was altered, or signed with another ' +
      'EXPORT_SIGNING_KEY$', 'm'))
  t.same(await query(targetDb.adminUrl, 'SELECT id FROM tenants'), [], 'no tenant')
  t.equal(await partitions(), partitionsBefore, 'and no partition left behind')
})

t.test('an export from before signing imports only with --allow-unsigned, which warns', async (t) => {
  const file = path.join(dir, 'pre-signing.ndjson')
  await writeFile(file, viaHttp.replace(/^\{"signature":.*\n/m, ''))
  // Without the flag it is refused like any file without a trailer (above, and test/db/export-signature.test.ts).
  const targetDb = await createTestDatabase(t)
  const run = await runNpmScript('import', ['--file', file, '--allow-unsigned'], targetDb)
  t.equal(run.code, 0, run.stderr)
  t.match(run.stderr,
    /^rowfence import: warning: the export is not signed \(--allow-unsigned\): nothing vouches for its content$/m)
  const target = await buildTestApp(t, unshed, targetDb)
  t.equal(await exportOf(target, tenant.id), viaHttp, 'exported from here it is signed again, with the same bytes')
})
