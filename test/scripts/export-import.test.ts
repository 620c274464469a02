import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type TestApp } from '../helpers/app.ts'
import { createTestDatabase, query } from '../helpers/db.ts'
import { runNpmScript } from '../helpers/npm.ts'
import { operator } from '../helpers/operator.ts'

// `npm run export` and `npm run import` as an operator runs them: child processes, configured by
// the environment, progress on stderr, an exit code that says whether it worked.

const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-cli-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const source = await buildTestApp(t)
const tenant = await provisionTenant(source, 'cli-exported')
const customer = (await source.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Ada' } }))).json<{ id: string }>()
for (let i = 0; i < 3; i++) {
  await source.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload: { customer_id: customer.id, currency: 'EUR', lines: [{ description: `line ${i}`, quantity: 2, unit_amount_cents: 150 }] } }))
}
const viaHttp = (await source.app.inject({ method: 'GET', url: `/admin/v1/tenants/${tenant.id}/export`, headers: operator(source) })).body

async function exportOf (c: TestApp, id: string): Promise<string> {
  return (await c.app.inject({ method: 'GET', url: `/admin/v1/tenants/${id}/export`, headers: operator(c) })).body
}

t.test('npm run export writes the NDJSON to stdout and its progress to stderr', async (t) => {
  const run = await runNpmScript('export', ['--tenant', tenant.id], source.db)
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stdout, viaHttp, 'stdout holds exactly the export, the same as the operator API serves')
  t.match(run.stderr, /export .*100% \| \d+\/\d+ rows/, 'a progress bar, on stderr')
  t.match(run.stderr, new RegExp(`exported \\d+ rows of tenant ${tenant.id}`))
})

t.test('npm run export --out writes the file; a bad tenant is a non-zero exit with a clear message', async (t) => {
  const file = path.join(dir, 'out.ndjson')
  const run = await runNpmScript('export', ['--tenant', tenant.id, '--out', file], source.db)
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stdout, '')
  t.equal(await readFile(file, 'utf8'), viaHttp)
  const missing = await runNpmScript('export', ['--tenant', '0190a6d2-0000-7000-8000-000000000000'], source.db)
  t.not(missing.code, 0)
  t.match(missing.stderr, /^export: tenant 0190a6d2-0000-7000-8000-000000000000 not found$/m)
  const malformed = await runNpmScript('export', ['--tenant', 'nope'], source.db)
  t.not(malformed.code, 0)
  t.match(malformed.stderr, /^export: --tenant <uuid> is required$/m)
})

t.test('npm run import loads an export into another deployment, and refuses where the tenant exists', async (t) => {
  const file = path.join(dir, 'tenant.ndjson')
  await writeFile(file, viaHttp)
  const targetDb = await createTestDatabase(t)
  const run = await runNpmScript('import', ['--file', file, '--placement', 'dedicated'], targetDb)
  t.equal(run.code, 0, run.stderr)
  t.match(run.stderr, /import .*100% of the file/, 'a progress bar, on stderr')
  t.match(run.stderr, new RegExp(`imported tenant ${tenant.id} \\(dedicated\\)`))
  const target = await buildTestApp(t, {}, targetDb)
  t.equal(await exportOf(target, tenant.id), viaHttp, 'export → import → export is identical')
  t.equal((await target.app.inject(as(tenant, { method: 'GET', url: '/v1/invoices' }))).statusCode, 200, 'and the key works there')
  t.same(await query(targetDb.adminUrl, 'SELECT shard FROM shard_reservations'), [], 'the dedicated shard was handed over')

  const again = await runNpmScript('import', ['--file', file], targetDb)
  t.not(again.code, 0, 'importing over an existing tenant fails')
  t.match(again.stderr, /^import: a tenant with id .* already exists here$/m)
})

t.test('npm run import refuses a bad file with a non-zero exit and a clear message, writing nothing', async (t) => {
  const targetDb = await createTestDatabase(t)
  const partitionsBefore = (await query(targetDb.adminUrl, "SELECT 1 FROM pg_class WHERE relispartition AND relkind = 'r'")).length
  const garbage = path.join(dir, 'garbage.ndjson')
  await writeFile(garbage, 'this is not an export\n')
  const notJson = await runNpmScript('import', ['--file', garbage], targetDb)
  t.not(notJson.code, 0)
  t.match(notJson.stderr, /^import: line 1: not JSON$/m)
  const absent = await runNpmScript('import', ['--file', path.join(dir, 'absent.ndjson')], targetDb)
  t.not(absent.code, 0)
  t.match(absent.stderr, /^import: cannot read --file .*absent\.ndjson: no such file$/m)
  // An altered export is found out only at the end, after a dedicated shard was created for it.
  const altered = path.join(dir, 'altered.ndjson')
  await writeFile(altered, viaHttp.replace(/"action":"customer\.created"/, '"action":"customer.deleted"'))
  const tampered = await runNpmScript('import', ['--file', altered, '--placement', 'dedicated'], targetDb)
  t.not(tampered.code, 0)
  t.match(tampered.stderr, /^import: the imported audit trail does not reproduce the exported chain head/m)
  t.same(await query(targetDb.adminUrl, 'SELECT id FROM tenants'), [], 'no tenant')
  t.equal((await query(targetDb.adminUrl, "SELECT 1 FROM pg_class WHERE relispartition AND relkind = 'r'")).length, partitionsBefore, 'and no partition left behind')
})
