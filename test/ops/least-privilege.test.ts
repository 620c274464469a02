import { copyFile, mkdtemp, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import pg from 'pg'
import { migrate, SQL_DIR } from '../../src/ops/migrate.ts'
import { createTestDatabase, query } from '../helpers/db.ts'

/** The migrations up to (and including, when `through`) a version, in a directory of their own. */
async function migrationsBefore (version: string, through = false): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-sql-'))
  for (const file of await readdir(SQL_DIR)) {
    if (file.endsWith('.sql') && (through ? file.slice(0, 4) <= version : file.slice(0, 4) < version)) {
      await copyFile(path.join(SQL_DIR, file), path.join(dir, file))
    }
  }
  return dir
}

/**
 * Runs statements in one transaction bound to a tenant, as the given role, with what a request's binding
 * sets (no default quotas: sql/0021 refuses a metered write of the runtime role without them).
 */
async function inTenant (url: string, tenantId: string, statements: Array<[string, unknown[]]>): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenantId])
    await client.query("SELECT set_config('app.default_limits', '{}', true)")
    for (const [text, values] of statements) await client.query(text, values)
    await client.query('COMMIT')
  } finally {
    await client.end()
  }
}

const hash = (n: number): Buffer => Buffer.alloc(32, n)
const KEY = 'INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, created_at) ' +
  "VALUES ($1, $2, 'rfk_x', $3, $4, $5)"

t.test("0010 keeps owner rights only for each tenant's initial admin key", async (t) => {
  const db = await createTestDatabase(t, { empty: true })
  await migrate(db.ownerUrl, { dir: await migrationsBefore('0010') })
  const [a, b] = ['0190a6d2-0000-7000-8000-00000000000a', '0190a6d2-0000-7000-8000-00000000000b']
  await query(db.adminUrl, `INSERT INTO tenants (id, name, slug, shard) VALUES
    ('${a}', 'A', 'tenant-a', pooled_shard_for('${a}')), ('${b}', 'B', 'tenant-b', pooled_shard_for('${b}'))`)
  await inTenant(db.ownerUrl, a, [
    [KEY, ['0190a6d2-0000-7000-8000-0000000000a1', 'initial admin key', hash(1), ['read', 'write', 'admin'],
      '2026-01-01T00:00:00Z']],
    [KEY, ['0190a6d2-0000-7000-8000-0000000000a2', 'minted by an admin', hash(2), ['read', 'write', 'admin'],
      '2026-01-02T00:00:00Z']],
  ])
  // Tenant B's first key lost its admin scope: it keeps no owner rights.
  await inTenant(db.ownerUrl, b, [
    [KEY, ['0190a6d2-0000-7000-8000-0000000000b1', 'initial admin key', hash(3), ['read'], '2026-01-01T00:00:00Z']],
    [KEY, ['0190a6d2-0000-7000-8000-0000000000b2', 'later', hash(4), ['read', 'write', 'admin'],
      '2026-01-02T00:00:00Z']],
  ])
  await migrate(db.ownerUrl, { dir: await migrationsBefore('0010', true) })
  const rows = await query<{ id: string, owner_rights: boolean }>(db.adminUrl,
    'SELECT id, owner_rights FROM api_keys ORDER BY id')
  t.same(rows.map((r) => [r.id.slice(-2), r.owner_rights]), [['a1', true], ['a2', false], ['b1', false], ['b2', false]])
})

t.test('the runtime role can no longer delete or rename keys, and still does what the API needs', async (t) => {
  const db = await createTestDatabase(t)
  const tenant = '0190a6d2-0000-7000-8000-0000000000cc'
  await query(db.adminUrl, `INSERT INTO tenants (id, name, slug, shard)
    VALUES ('${tenant}', 'C', 'tenant-c', pooled_shard_for('${tenant}'))`)
  await inTenant(db.appUrl, tenant,
    [[KEY, ['0190a6d2-0000-7000-8000-0000000000c1', 'k', hash(5), ['read'], '2026-01-01T00:00:00Z']]])
  const refused = async (text: string): Promise<unknown> =>
    inTenant(db.appUrl, tenant, [[text, []]]).then(() => undefined, (e: unknown) => e)
  t.match(await refused('DELETE FROM api_keys'), { code: '42501' }, 'DELETE on api_keys is revoked')
  t.match(await refused("UPDATE api_keys SET name = 'renamed'"), { code: '42501' },
    'UPDATE (name) on api_keys is revoked')
  t.match(await refused('UPDATE api_keys SET owner_rights = true'), { code: '42501' },
    'owner rights are never updated by the runtime role')
  t.equal(await refused('UPDATE api_keys SET revoked_at = now(), last_used_at = now()'), undefined,
    'revoking and recording use still work')
  t.equal(await refused("SELECT user_id FROM memberships WHERE role = 'owner' FOR UPDATE"), undefined,
    'the owners can still be locked')
  const [key] = await query<{ owner_rights: boolean }>(db.adminUrl, 'SELECT owner_rights FROM api_keys')
  t.equal(key?.owner_rights, false, 'a key the runtime role inserts has no owner rights unless it says so')
})

t.test('since 0013 a key has owner rights only when its insert says so, whichever role inserts it', async (t) => {
  const db = await createTestDatabase(t)
  const tenant = '0190a6d2-0000-7000-8000-0000000000ee'
  await query(db.adminUrl, `INSERT INTO tenants (id, name, slug, shard)
    VALUES ('${tenant}', 'E', 'tenant-e', pooled_shard_for('${tenant}'))`)
  await inTenant(db.ownerUrl, tenant, [
    [KEY, ['0190a6d2-0000-7000-8000-0000000000e1', 'owner, silent', hash(6), ['read', 'write', 'admin'],
      '2026-01-01T00:00:00Z']],
    [
      'INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, owner_rights) ' +
        "VALUES ($1, 'owner, says so', 'rfk_x', $2, '{read,write,admin}', true)",
      ['0190a6d2-0000-7000-8000-0000000000e2', hash(7)],
    ],
  ])
  await inTenant(db.appUrl, tenant, [[KEY, ['0190a6d2-0000-7000-8000-0000000000e3', 'runtime, silent', hash(8),
    ['read', 'write', 'admin'], '2026-01-01T00:00:00Z']]])
  const rows = await query<{ id: string, owner_rights: boolean }>(db.adminUrl,
    'SELECT id, owner_rights FROM api_keys ORDER BY id')
  t.same(rows.map((r) => [r.id.slice(-2), r.owner_rights]), [['e1', false], ['e2', true], ['e3', false]])
})
