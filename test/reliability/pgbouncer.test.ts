// The server behind PgBouncer in transaction pooling mode, with a small server pool: many client
// connections take turns on two server connections, so any session state (a session-level SET, a
// named prepared statement of PgBouncer < 1.21) would show up in another client's transaction.
// The cross-tenant attacks run through it, then an interleaving of many tenants.
import t from 'tap'
import { crossTenantAttacks } from '../isolation/attacks.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { findPgbouncer, startPgbouncer } from '../helpers/pgbouncer.ts'

const binary = findPgbouncer()
if (binary === undefined) {
  // .ci/run installs it (Debian package pgbouncer) and sets REQUIRE_PGBOUNCER, so CI never skips.
  if (process.env.REQUIRE_PGBOUNCER === '1') throw new Error('pgbouncer is required (REQUIRE_PGBOUNCER=1) but not installed')
  t.plan(0, 'pgbouncer is not installed (Debian: apt-get install pgbouncer); these tests need it')
} else {
  const db = await createTestDatabase(t)
  const bouncer = await startPgbouncer(t, binary, [db.appUrl, db.ownerUrl], { poolSize: 2 })
  const viaBouncer = { ...db, appUrl: bouncer.through(db.appUrl) }
  const ctx = await buildTestApp(t, {
    // PgBouncer 1.18 in transaction mode cannot keep named prepared statements (1.21+ can).
    DB_PREPARED_STATEMENTS: false,
    // LISTEN needs a session of its own: it goes to the server directly.
    DB_LISTEN_URL: db.appUrl,
    DB_POOL_MAX: 8,
  }, viaBouncer)
  // Its setup is awaited here, before any subtest is queued (tap would end the file otherwise).
  await crossTenantAttacks(t, ctx)

  t.test('the app really talks to the database through PgBouncer', async (t) => {
    t.match(ctx.app.dbPool.options.connectionString, `:${bouncer.port}/`)
    const tenant = await provisionTenant(ctx)
    t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  })

  t.test('thousands of interleaved requests of many tenants over two server connections: each sees only its own', async (t) => {
    const tenants = await Promise.all(Array.from({ length: 8 }, async () => provisionTenant(ctx)))
    const own = new Map<string, Set<string>>()
    for (const tenant of tenants) {
      const ids = new Set<string>()
      for (let i = 0; i < 3; i++) {
        const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: `${tenant.slug} ${i}` } }))
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
            : await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: `${tenant.slug} extra ${i}` } }))
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
