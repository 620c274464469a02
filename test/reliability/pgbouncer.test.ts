// The server behind PgBouncer in transaction pooling mode, with a small server pool: many client
// connections take turns on two server connections, so any session state (a session-level SET, a
// named prepared statement of PgBouncer < 1.21) would show up in another client's transaction.
// The cross-tenant attacks run through it, then an interleaving of many tenants.
import t from 'tap'
import { crossTenantAttacks, interleavedTenants } from '../isolation/attacks.ts'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { findPgbouncer, startPgbouncer } from '../helpers/pgbouncer.ts'
import { waitUntil } from '../helpers/operator.ts'
import { startReceiver, startTestWorker } from '../helpers/webhooks.ts'

const binary = findPgbouncer()
if (binary === undefined) {
  // .ci/run installs it (Debian package pgbouncer) and sets REQUIRE_PGBOUNCER, so CI never skips.
  if (process.env.REQUIRE_PGBOUNCER === '1') {
    throw new Error('pgbouncer is required (REQUIRE_PGBOUNCER=1) but not installed')
  }
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
    WEBHOOK_ALLOW_PRIVATE_TARGETS: true,
  }, viaBouncer)
  // Its setup is awaited here, before any subtest is queued (tap would end the file otherwise).
  await crossTenantAttacks(t, ctx)

  t.test('the app really talks to the database through PgBouncer', async (t) => {
    t.match(ctx.app.dbPool.options.connectionString, `:${bouncer.port}/`)
    const tenant = await provisionTenant(ctx)
    t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/tenant' }))).statusCode, 200)
  })

  t.test('webhooks enqueued through PgBouncer are delivered by a worker on a direct connection', async (t) => {
    // The queue LISTENs for new jobs and holds row locks across its own statements: it needs a
    // session of its own, so WORKER_DATABASE_URL goes to the server directly; enqueueing happens
    // inside the requests' transactions, through PgBouncer.
    const tenant = await provisionTenant(ctx)
    const receiver = await startReceiver(t)
    const created = await ctx.app.inject(as(tenant, {
      method: 'POST', url: '/v1/webhook-endpoints', payload: { url: receiver.url, event_types: ['customer.*'] },
    }))
    t.equal(created.statusCode, 201, created.body)
    await startTestWorker(t, ctx, { WORKER_DATABASE_URL: db.appUrl })
    await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: `b${i}` } }))
      t.equal(res.statusCode, 201)
    }))
    await waitUntil('20 deliveries', async () => receiver.ids().size === 20, 30_000)
    t.equal(receiver.received.length, 20, 'each once')
  })

  interleavedTenants(t, ctx,
    'thousands of interleaved requests of many tenants over two server connections: each sees only its own')
}
