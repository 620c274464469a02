import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import pg from 'pg'
import { loadConfig } from '../../src/config.ts'
import { verifyExport } from '../../src/tenancy/export-signature.ts'
import { allocateShard } from '../../src/tenancy/shards.ts'
import { importTenant, type ImportOptions } from '../../src/tenancy/tenant-import.ts'
import { as, buildTestApp, provisionTenant, TEST_EXPORT_SIGNING_KEY } from '../helpers/app.ts'
import { createTestDatabase, query, type TestDatabase } from '../helpers/db.ts'
import { operator } from '../helpers/operator.ts'
import { reviewAttack } from '../helpers/export-attack.ts'

// Import checks the signature over the whole file before it writes anything: every way of touching
// a signed export is refused, and the target database is left as it was.

const unshed = { MAX_EVENT_LOOP_DELAY_MS: 0 } // load shedding is not under test
const source = await buildTestApp(t, unshed)
const tenant = await provisionTenant(source, 'signed')
const created = await source.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Ada' } }))
const customer = created.json<{ id: string }>()
for (let i = 0; i < 2; i++) {
  const line = { description: `line ${i}`, quantity: 1, unit_amount_cents: 100 }
  const payload = { customer_id: customer.id, currency: 'EUR', lines: [line] }
  await source.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload }))
}
const exportUrl = `/admin/v1/tenants/${tenant.id}/export`
const exported = (await source.app.inject({ method: 'GET', url: exportUrl, headers: operator(source) })).body
const lines = exported.trimEnd().split('\n')
const target = await createTestDatabase(t)

const signed = (ls: string[]): string => ls.map((l) => `${l}\n`).join('')
const isSignature = (l: string): boolean => l.startsWith('{"signature":')
const NOT_SIGNED = /^the export is not signed \(its last line is no signature trailer\)/
const MISMATCH = /^the export's signature does not match: it was altered, or signed with another EXPORT_SIGNING_KEY$/
const COUNT = /^the export has \d+ lines before its signature trailer, which covers \d+: it was truncated or altered$/

async function importText (text: string | Buffer[], options: Partial<ImportOptions> = {}, into: TestDatabase = target) {
  const pool = new pg.Pool({ connectionString: into.ownerUrl, max: 1 })
  try {
    const open = () => Readable.from(typeof text === 'string' ? [text] : text)
    return await importTenant(pool, open, async (client, tenantId) =>
      ({ shard: await allocateShard(client, tenantId, 'dedicated'), placement: 'dedicated' }),
    { signingKey: TEST_EXPORT_SIGNING_KEY, ...options })
  } finally {
    await pool.end()
  }
}

const nothingWritten = async (t: Test, into: TestDatabase = target): Promise<void> => {
  t.same(await query(into.adminUrl, 'SELECT id FROM tenants'), [], 'no tenant written')
  t.same(await query(into.adminUrl, 'SELECT 1 FROM shard_reservations'), [], 'no shard reserved')
}

t.test('an export ends with one signature line: format version, line count and HMAC-SHA256', async (t) => {
  const trailer = JSON.parse(lines.at(-1)!) as { signature: Record<string, unknown> }
  t.match(trailer, { signature: { version: 1, alg: 'HMAC-SHA256', lines: lines.length - 1, hmac: /^[0-9a-f]{64}$/ } })
  t.same(Object.keys(trailer), ['signature'])
  t.equal(lines.filter(isSignature).length, 1)
  // Checked on the bytes, however they are cut into chunks.
  const bytes = Buffer.from(exported)
  const oneByteChunks = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1))
  const check = await verifyExport(Readable.from(oneByteChunks), { key: TEST_EXPORT_SIGNING_KEY })
  t.same(check, { signed: true, lines: lines.length - 1 })
})

t.test('a touched export is refused before anything is written', async (t) => {
  const invoices = lines.filter((l) => l.startsWith('{"table":"invoices"'))
  t.equal(invoices.length, 2)
  const trailer = lines.at(-1)!
  const customers = lines.filter((l) => l.startsWith('{"table":"customers"'))
  const swap = (a: string, b: string) => (l: string) => l === a ? b : l === b ? a : l
  const zeroHmac = `"hmac":"${'0'.repeat(64)}"`
  const cases: Array<[string, string, RegExp]> = [
    ['the trailer removed', signed(lines.filter((l) => !isSignature(l))), NOT_SIGNED],
    ['one byte of one row changed', signed(lines.map((l) => l.replace('"name":"Ada"', '"name":"Adb"'))), MISMATCH],
    ['a line dropped', signed(lines.filter((l) => !l.startsWith('{"table":"invoice_lines"'))), COUNT],
    ['a line added', signed([lines[0]!, ...customers, ...lines.slice(1)]), COUNT],
    ['two lines swapped', signed(lines.map(swap(invoices[0]!, invoices[1]!))), MISMATCH],
    ['a line after the trailer', signed([...lines, lines[1]!]), /^line \d+: a line after the signature trailer$/],
    ['an empty line after the trailer', `${exported}\n`, /^line \d+: a line after the signature trailer$/],
    ['the trailer and the lines before it truncated', signed(lines.slice(0, -3)), NOT_SIGNED],
    ['cut mid-line', exported.slice(0, Math.floor(exported.length / 2)), NOT_SIGNED],
    ['the hmac replaced', signed([...lines.slice(0, -1), trailer.replace(/"hmac":"\w+"/, zeroHmac)]), MISMATCH],
    ['an unknown format version', signed([...lines.slice(0, -1), trailer.replace('"version":1', '"version":2')]),
      /^unsupported export format version 2/],
    ['CRLF line ends', exported.replaceAll('\n', '\r\n'), MISMATCH],
  ]
  for (const [what, text, message] of cases) {
    t.not(text, exported, what)
    await t.rejects(importText(text), { name: 'ImportError', message }, what)
  }
  await nothingWritten(t)
})

t.test('an export signed with another key is refused; a signed one needs the key, allowUnsigned or not', async (t) => {
  await t.rejects(importText(exported, { signingKey: 'another-deployment-export-signing-key-0123456789' }),
    { name: 'ImportError', message: MISMATCH })
  await t.rejects(importText(exported, { signingKey: undefined, allowUnsigned: true }),
    { name: 'ImportError', message: /^the export is signed, but EXPORT_SIGNING_KEY is not set to verify it$/ })
  const altered = signed(lines.map((l) => l.replace('"name":"Ada"', '"name":"Eve"')))
  await t.rejects(importText(altered, { allowUnsigned: true }), { name: 'ImportError', message: MISMATCH },
    'allowUnsigned does not let a bad signature in')
  await nothingWritten(t)
})

t.test('the review\'s attack (no chain head, an audit event edited, an owner key planted) is refused', async (t) => {
  const { attacked, planted } = reviewAttack(lines, tenant.id)
  t.ok(attacked.some((l) => l.includes('"action":"customer.deleted"')), 'an audit event edited')
  const unsigned = signed(attacked.filter((l) => !isSignature(l)))
  // Each form into a database of its own, where the planted key must open nothing afterwards.
  const forms: Array<[string, string, Partial<ImportOptions>, RegExp]> = [
    ['the trailer kept', signed(attacked), {}, MISMATCH],
    ['the trailer dropped', unsigned, {}, NOT_SIGNED],
    ['let in unsigned, the missing chain head still stops it', unsigned, { allowUnsigned: true },
      /^the export has audit events but no audit_heads row/],
  ]
  for (const [what, text, options, message] of forms) {
    const into = await createTestDatabase(t)
    await t.rejects(importText(text, options, into), { name: 'ImportError', message }, what)
    await nothingWritten(t, into)
    const app = await buildTestApp(t, unshed, into)
    const res = await app.app.inject({ url: '/v1/tenant', headers: { authorization: `Bearer ${planted.key}` } })
    t.equal(res.statusCode, 401, `${what}: the planted key opens nothing`)
  }
})

t.test('an unsigned file let in is still read line by line', async (t) => {
  await t.rejects(importText('this is not an export\n', { allowUnsigned: true }),
    { name: 'ImportError', message: 'line 1: not JSON' })
  await nothingWritten(t)
})

t.test('the untouched export imports, signed', async (t) => {
  const result = await importText(exported)
  t.match(result, { tenantId: tenant.id, signed: true })
  t.same(await query(target.adminUrl, 'SELECT id FROM tenants'), [{ id: tenant.id }])
})

t.test('EXPORT_SIGNING_KEY is a secret of at least 43 characters, never echoed', async (t) => {
  t.throws(() => loadConfig({ EXPORT_SIGNING_KEY: 'too-short-a-key' }), {
    name: 'ConfigError',
    message: 'invalid environment variable EXPORT_SIGNING_KEY: ' +
      'expected a secret of at least 43 characters (e.g. openssl rand -base64 32)',
  })
  t.equal(loadConfig({ EXPORT_SIGNING_KEY: TEST_EXPORT_SIGNING_KEY }).EXPORT_SIGNING_KEY, TEST_EXPORT_SIGNING_KEY)
})
