// Attacks across tenants, shared by test/isolation/cross-tenant.test.ts (a direct connection) and
// test/reliability/pgbouncer.test.ts (through a transaction-pooling PgBouncer). Each test tries to
// read, list, change, delete or guess another tenant's data through the API or straight through the
// runtime role, and must fail to.
import pg from 'pg'
import type { Test } from 'tap'
import { as, provisionTenant, type TestApp } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

/** Registers the attacks as subtests of `t`, against the app and runtime URL of `ctx`. */
export async function crossTenantAttacks (t: Test, ctx: TestApp): Promise<void> {
  const alice = await provisionTenant(ctx, 'alice')
  const bob = await provisionTenant(ctx, 'bob')

  async function createCustomer (
    tenant: { key: string },
    name: string,
    extra: Record<string, unknown> = {}
  ): Promise<{ id: string }> {
    const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name, ...extra } }))
    if (res.statusCode !== 201) throw new Error(`create failed: ${res.body}`)
    return res.json()
  }

  const aliceCustomer = await createCustomer(alice, 'Alice Customer',
    { external_ref: 'shared-ref', email: 'a@example.com' })
  const bobCustomer = await createCustomer(bob, 'Bob Customer')

  t.test("tenant B gets 404, not 403, for tenant A's customer", async (t) => {
    const res = await ctx.app.inject(as(bob, { method: 'GET', url: `/v1/customers/${aliceCustomer.id}` }))
    t.equal(res.statusCode, 404)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
    t.notMatch(res.body, 'Alice Customer', 'no data of the other tenant in the body')
    const own = await ctx.app.inject(as(alice, { method: 'GET', url: `/v1/customers/${aliceCustomer.id}` }))
    t.equal(own.statusCode, 200, 'the owner can read it')
  })

  t.test("a tenant's list never contains another tenant's customers", async (t) => {
    const res = await ctx.app.inject(as(bob, { method: 'GET', url: '/v1/customers?limit=200' }))
    t.equal(res.statusCode, 200)
    const ids = res.json<{ data: Array<{ id: string }> }>().data.map((c) => c.id)
    t.same(ids, [bobCustomer.id])
  })

  t.test("tenant B cannot change tenant A's customer", async (t) => {
    const res = await ctx.app.inject(as(bob, {
      method: 'PATCH',
      url: `/v1/customers/${aliceCustomer.id}`,
      payload: { name: 'pwned' },
    }))
    t.equal(res.statusCode, 404)
    const [row] = await query<{ name: string }>(ctx.db.adminUrl, 'SELECT name FROM customers WHERE id = $1',
      [aliceCustomer.id])
    t.equal(row?.name, 'Alice Customer', 'the row is unchanged')
  })

  t.test("tenant B cannot delete tenant A's customer", async (t) => {
    const res = await ctx.app.inject(as(bob, { method: 'DELETE', url: `/v1/customers/${aliceCustomer.id}` }))
    t.equal(res.statusCode, 404)
    const rows = await query(ctx.db.adminUrl, 'SELECT 1 FROM customers WHERE id = $1', [aliceCustomer.id])
    t.equal(rows.length, 1, 'the row still exists')
  })

  t.test("tenant B cannot list, get or guess tenant A's events", async (t) => {
    const own = await ctx.app.inject(as(alice, { method: 'GET', url: '/v1/events?limit=200' }))
    const aliceEvents = own.json<{ data: Array<{ id: string }> }>().data
    t.ok(aliceEvents.length > 0, 'A has events')
    const listed = await ctx.app.inject(as(bob, { method: 'GET', url: '/v1/events?limit=200' }))
    t.equal(listed.statusCode, 200)
    const ids = listed.json<{ data: Array<{ id: string }> }>().data.map((e) => e.id)
    t.notOk(ids.some((id) => aliceEvents.some((e) => e.id === id)), "none of A's events in B's list")
    for (const id of [aliceEvents[0]!.id, aliceEvents[0]!.id.replace(/.$/, '0')]) {
      const res = await ctx.app.inject(as(bob, { method: 'GET', url: `/v1/events/${id}` }))
      t.equal(res.statusCode, 404, id)
      t.notMatch(res.body, 'Alice Customer')
    }
  })

  t.test('unique keys are per tenant: reusing a reference tells nothing about other tenants', async (t) => {
    const res = await ctx.app.inject(as(bob, {
      method: 'POST',
      url: '/v1/customers',
      payload: { name: 'Copycat', external_ref: 'shared-ref' },
    }))
    t.equal(res.statusCode, 201, "the other tenant's reference does not conflict")
    const dup = await ctx.app.inject(as(bob, {
      method: 'POST',
      url: '/v1/customers',
      payload: { name: 'Twice', external_ref: 'shared-ref' },
    }))
    t.equal(dup.statusCode, 409, 'a duplicate inside one tenant does')
  })

  t.test('a key is never accepted for another tenant, whatever x-tenant-id says', async (t) => {
    const switched = await ctx.app.inject(as(bob, {
      method: 'GET',
      url: `/v1/customers/${aliceCustomer.id}`,
      headers: { 'x-tenant-id': alice.id },
    }))
    t.equal(switched.statusCode, 403, 'asking for another tenant is refused')
    t.notMatch(switched.body, 'Alice Customer')
    const listed = await ctx.app.inject(as(bob, {
      method: 'GET',
      url: '/v1/customers',
      headers: { 'x-tenant-id': alice.id },
    }))
    t.equal(listed.statusCode, 403)
    const own = await ctx.app.inject(as(bob, { method: 'GET', url: '/v1/tenant', headers: { 'x-tenant-id': bob.id } }))
    t.equal(own.statusCode, 200)
    t.equal(own.json<{ id: string }>().id, bob.id)
  })

  t.test("a key re-labelled with another tenant's id is rejected", async (t) => {
    // Splice Alice's tenant id into Bob's key (and fix the checksum): the lookup runs under Alice's
    // binding, finds no such key, and refuses.
    const { parseApiKey, API_KEY_PREFIX } = await import('../../src/auth/api-keys.ts')
    const { crc32 } = await import('node:zlib')
    const { parse } = await import('uuid')
    const body = bob.key.slice(API_KEY_PREFIX.length, -6)
    const forgedBody = body.slice(0, 22) + Buffer.from(parse(alice.id)).toString('base64url') + body.slice(44)
    const sum = Buffer.alloc(4)
    sum.writeUInt32BE(crc32(API_KEY_PREFIX + forgedBody))
    const forged = API_KEY_PREFIX + forgedBody + sum.toString('base64url')
    t.equal(parseApiKey(forged)?.tenantId, alice.id, 'the forged key parses as an Alice key')
    const res = await ctx.app.inject({
      method: 'GET',
      url: '/v1/customers',
      headers: { authorization: `Bearer ${forged}` },
    })
    t.equal(res.statusCode, 401)
  })

  t.test('guessing ids: random and sequential-looking ids are all 404', async (t) => {
    const { v7 } = await import('uuid')
    for (const id of [v7(), '00000000-0000-0000-0000-000000000001', aliceCustomer.id.replace(/.$/, '0')]) {
      const res = await ctx.app.inject(as(bob, { method: 'GET', url: `/v1/customers/${id}` }))
      t.equal(res.statusCode, 404, id)
    }
  })

  t.test('the runtime role, bound to tenant B, cannot see or write tenant A rows even in raw SQL', async (t) => {
    const client = new pg.Client({ connectionString: ctx.db.appUrl })
    await client.connect()
    t.teardown(() => client.end())
    await client.query('BEGIN')
    await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [bob.id])
    const visible = await client.query('SELECT tenant_id FROM customers')
    t.ok(visible.rows.every((r: { tenant_id: string }) => r.tenant_id === bob.id), 'only B rows, even without a WHERE')
    const tenants = await client.query('SELECT id FROM tenants')
    t.same(tenants.rows.map((r: { id: string }) => r.id), [bob.id], 'the tenant registry shows only B')
    const keys = await client.query('SELECT tenant_id FROM api_keys')
    t.ok(keys.rows.length > 0 && keys.rows.every((r: { tenant_id: string }) => r.tenant_id === bob.id))
    const events = await client.query('SELECT tenant_id FROM events')
    t.ok(events.rows.length > 0 && events.rows.every((r: { tenant_id: string }) => r.tenant_id === bob.id),
      'events: only B rows')
    const updated = await client.query("UPDATE customers SET name = 'x' WHERE id = $1", [aliceCustomer.id])
    t.equal(updated.rowCount, 0, 'UPDATE of an A row touches nothing')
    const deleted = await client.query('DELETE FROM customers WHERE id = $1', [aliceCustomer.id])
    t.equal(deleted.rowCount, 0, 'DELETE of an A row touches nothing')
    await client.query('SAVEPOINT s')
    await t.rejects(
      client.query("INSERT INTO customers (tenant_id, id, name) VALUES ($1, gen_random_uuid(), 'planted')", [alice.id]),
      { code: '42501', message: /row-level security/ },
      'WITH CHECK refuses a row written with another tenant id'
    )
    await client.query('ROLLBACK TO SAVEPOINT s')
    await t.rejects(
      client.query('UPDATE customers SET tenant_id = $1 WHERE tenant_id = $2', [alice.id, bob.id]),
      { code: '42501' },
      'moving a row to another tenant is refused (no UPDATE grant on tenant_id, and WITH CHECK)'
    )
    await client.query('ROLLBACK')
  })

  t.test('the runtime role cannot escape RLS with TRUNCATE, policy changes or a session SET', async (t) => {
    const client = new pg.Client({ connectionString: ctx.db.appUrl })
    await client.connect()
    t.teardown(() => client.end())
    await t.rejects(client.query('TRUNCATE customers'), { code: '42501' })
    await t.rejects(client.query('ALTER TABLE customers NO FORCE ROW LEVEL SECURITY'), { code: '42501' })
    await t.rejects(client.query('DROP POLICY tenant_isolation ON customers'), { code: '42501' })
    await t.rejects(client.query('CREATE TABLE stash (x int)'), { code: '42501' })
    await t.rejects(client.query('SET row_security = off; SELECT * FROM customers'), /row-level security/)
    const noTenant = await client.query('SELECT count(*)::int AS n FROM customers')
    t.equal(noTenant.rows[0].n, 0, 'with no tenant bound, nothing is visible')
  })
}

/**
 * Many tenants' requests interleaved on few connections (the app's pool, or PgBouncer's server
 * pool): thousands of mixed reads and writes, 40 in flight at a time, and every response holds only
 * its own tenant's ids.
 */
export function interleavedTenants (t: Test, ctx: TestApp, title: string): void {
  t.test(title, async (t) => {
    const tenants = await Promise.all(Array.from({ length: 8 }, async () => provisionTenant(ctx)))
    const own = new Map<string, Set<string>>()
    for (const tenant of tenants) {
      const ids = new Set<string>()
      for (let i = 0; i < 3; i++) {
        const res = await ctx.app.inject(as(tenant, {
          method: 'POST',
          url: '/v1/customers',
          payload: { name: `${tenant.slug} ${i}` },
        }))
        ids.add(res.json<{ id: string }>().id)
      }
      own.set(tenant.id, ids)
    }
    const everyone = new Set([...own.values()].flatMap((s) => [...s]))
    let checked = 0
    const failures: string[] = []
    const one = async (i: number): Promise<void> => {
      const tenant = tenants[i % tenants.length]!
      const mine = own.get(tenant.id)!
      const kind = i % 4
      const res = kind === 0
        ? await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/customers?limit=200' }))
        : kind === 1
          ? await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/customers/${[...mine][i % 3]}` }))
          : kind === 2
            ? await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))
            : await ctx.app.inject(as(tenant, {
              method: 'POST',
              url: '/v1/customers',
              payload: { name: `${tenant.slug} extra ${i}` },
            }))
      if (res.statusCode >= 300) { failures.push(`${res.statusCode} ${res.body}`); return }
      checked++
      const body = res.body
      for (const id of everyone) if (!mine.has(id) && body.includes(id)) failures.push(`${tenant.slug} saw ${id}`)
      if (kind === 2 && res.json<{ id: string }>().id !== tenant.id) failures.push(`${tenant.slug} got another tenant`)
    }
    // 40 requests in flight at any time, over 8 client and 2 server connections.
    let next = 0
    await Promise.all(Array.from({ length: 40 }, async () => { while (next < 2000) await one(next++) }))
    t.same(failures.slice(0, 5), [], 'no failure and no foreign id in any response')
    t.equal(checked, 2000)
  })
}
