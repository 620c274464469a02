import t from 'tap'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

const ctx = await buildTestApp(t)
const tenant = await provisionTenant(ctx)

t.test('every kind of bad tenant credential is a 401 problem with a Bearer challenge', async (t) => {
  const key = tenant.key
  const cases: Array<[string, Record<string, string>]> = [
    ['missing', {}],
    ['empty', { authorization: '' }],
    ['wrong scheme', { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }],
    ['bearer without token', { authorization: 'Bearer ' }],
    ['garbage', { authorization: 'Bearer hunter2' }],
    ['truncated key', { authorization: `Bearer ${key.slice(0, -10)}` }],
    ['bad checksum', { authorization: `Bearer ${key.slice(0, -1)}${key.endsWith('A') ? 'B' : 'A'}` }],
    ['operator token', { authorization: `Bearer ${ctx.adminToken}` }],
  ]
  for (const [name, headers] of cases) {
    const res = await ctx.app.inject({ method: 'GET', url: '/v1/customers', headers })
    t.equal(res.statusCode, 401, name)
    t.equal(res.headers['www-authenticate'], 'Bearer realm="rowfence"', name)
    t.equal(res.json<{ status: number }>().status, 401, name)
  }
})

t.test('a valid key id with a wrong secret is refused', async (t) => {
  const { API_KEY_PREFIX } = await import('../../src/auth/api-keys.ts')
  const { crc32 } = await import('node:zlib')
  const body = tenant.key.slice(API_KEY_PREFIX.length, -6)
  const wrongSecret = body.slice(0, 44) + 'A'.repeat(43)
  const sum = Buffer.alloc(4)
  sum.writeUInt32BE(crc32(API_KEY_PREFIX + wrongSecret))
  const res = await ctx.app.inject({
    method: 'GET',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${API_KEY_PREFIX}${wrongSecret}${sum.toString('base64url')}` },
  })
  t.equal(res.statusCode, 401)
})

t.test('a revoked key fails on its very next request', async (t) => {
  const other = await provisionTenant(ctx)
  t.equal((await ctx.app.inject(as(other, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  await query(ctx.db.adminUrl, 'UPDATE api_keys SET revoked_at = now() WHERE id = $1', [other.keyId])
  t.equal((await ctx.app.inject(as(other, { method: 'GET', url: '/v1/tenant' }))).statusCode, 401)
})

t.test('a key without the write scope cannot write', async (t) => {
  const other = await provisionTenant(ctx)
  await query(ctx.db.adminUrl, "UPDATE api_keys SET scopes = '{read}' WHERE id = $1", [other.keyId])
  t.equal((await ctx.app.inject(as(other, { method: 'GET', url: '/v1/customers' }))).statusCode, 200)
  const res = await ctx.app.inject(as(other, { method: 'POST', url: '/v1/customers', payload: { name: 'no' } }))
  t.equal(res.statusCode, 403)
  t.match(res.json(), { status: 403, detail: /write scope/ })
})

t.test('GET /v1/tenant returns the caller\'s tenant', async (t) => {
  const res = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))
  t.equal(res.statusCode, 200)
  t.match(res.json(), { id: tenant.id, slug: tenant.slug })
})

t.test('operator routes take the operator token and nothing else', async (t) => {
  const admin = { authorization: `Bearer ${ctx.adminToken}` }
  const list = await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants', headers: admin })
  t.equal(list.statusCode, 200)
  t.ok(list.json<{ data: Array<{ id: string }> }>().data.some((x) => x.id === tenant.id),
    'the operator sees every tenant')
  const withKey = await ctx.app.inject(as(tenant, { method: 'GET', url: '/admin/v1/tenants' }))
  t.equal(withKey.statusCode, 401, 'a tenant key (even an admin-scoped one) is refused')
  const wrong = await ctx.app.inject({
    method: 'GET',
    url: '/admin/v1/tenants',
    headers: { authorization: `Bearer ${ctx.adminToken}x` },
  })
  t.equal(wrong.statusCode, 401)
  const none = await ctx.app.inject({ method: 'GET', url: '/admin/v1/tenants' })
  t.equal(none.statusCode, 401)
  const one = await ctx.app.inject({ method: 'GET', url: `/admin/v1/tenants/${tenant.id}`, headers: admin })
  t.match(one.json(), { id: tenant.id, slug: tenant.slug })
})

t.test('provisioning validates the body and refuses a duplicate slug with 409', async (t) => {
  const admin = { authorization: `Bearer ${ctx.adminToken}` }
  const invalid = [{ name: 'x', slug: 'A' }, { name: 'x', slug: '-a' }, { name: '', slug: 'ok-slug' }, { name: 'x' }]
  for (const payload of invalid) {
    const res = await ctx.app.inject({ method: 'POST', url: '/admin/v1/tenants', headers: admin, payload })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
  }
  const dup = await ctx.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: admin,
    payload: { name: 'Again', slug: tenant.slug },
  })
  t.equal(dup.statusCode, 409)
  t.match(dup.json(), { detail: 'a tenant with this slug already exists' })
  t.notMatch(dup.body, /tenants_slug_key|duplicate key/)
})

t.test('keys are stored only as hashes', async (t) => {
  const { createHash } = await import('node:crypto')
  // A second key, created through the API (with an idempotency key) and used, so that every place a
  // request could leave text behind (audit trail, idempotency records, usage) has had its chance.
  const created = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/api-keys',
    headers: { 'idempotency-key': 'hash-only' },
    payload: { name: 'second', scopes: ['read', 'write'] },
  }))
  t.equal(created.statusCode, 201)
  const second = created.json<{ id: string, key: string }>()
  const made = await ctx.app.inject(as(second, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'made with the second key' },
  }))
  t.equal(made.statusCode, 201)
  await ctx.app.keyUsage.flush()

  for (const [id, key] of [[tenant.keyId, tenant.key], [second.id, second.key]] as const) {
    const [row] = await query<{ secret_hash: Buffer, prefix: string }>(ctx.db.adminUrl,
      'SELECT secret_hash, prefix FROM api_keys WHERE id = $1', [id])
    t.same(row?.secret_hash, createHash('sha256').update(key).digest(), 'secret_hash is SHA-256 of the key')
    t.ok(key.startsWith(row!.prefix), 'the stored prefix is the public start of the key')
  }

  // Every text-like column of every table (the admin connection sees past RLS), searched for the
  // secret part of either key: rfk_ + key id (22) + tenant id (22) + secret (43) + checksum (6).
  const columns = await query<{ table_name: string, column_name: string }>(ctx.db.adminUrl, `
    SELECT c.table_name, c.column_name FROM information_schema.columns c
      JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
     WHERE c.table_schema = 'public' AND tb.table_type = 'BASE TABLE'
       AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')
            OR (c.data_type = 'ARRAY' AND c.udt_name IN ('_text', '_varchar')))`)
  t.ok(columns.some((c) => c.table_name === 'audit_events' && c.column_name === 'data'),
    'the search covers the audit trail')
  t.ok(columns.some((c) => c.table_name === 'idempotency_keys'), 'and idempotency records')
  const secrets = [tenant.key, second.key].map((key) => key.slice(48, 91))
  t.equal(secrets[0]!.length, 43)
  const ident = (name: string): string => `"${name.replaceAll('"', '""')}"`
  for (const secret of secrets) {
    const found: string[] = []
    for (const c of columns) {
      const rows = await query(ctx.db.adminUrl,
        `SELECT 1 FROM ${ident(c.table_name)} WHERE position($1 in ${ident(c.column_name)}::text) > 0 LIMIT 1`,
        [secret])
      if (rows.length > 0) found.push(`${c.table_name}.${c.column_name}`)
    }
    t.same(found, [], 'the secret part of the key appears in no text column')
  }
  const [audited] = await query<{ n: number }>(ctx.db.adminUrl,
    "SELECT count(*)::int AS n FROM audit_events WHERE action = 'api_key.created' AND resource_id = $1", [second.id])
  t.equal(audited?.n, 1, 'the key creation itself was recorded (and searched)')
})
