import { Readable } from 'node:stream'
import pg from 'pg'
import t, { type Test } from 'tap'
import { allocateShard } from '../../src/tenancy/shards.ts'
import { importTenant } from '../../src/tenancy/tenant-import.ts'
import { as, buildTestApp, provisionTenant, TEST_EXPORT_SIGNING_KEY, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'

const ctx = await buildTestApp(t, { DB_POOL_MAX: 8 })
const admin = { authorization: `Bearer ${ctx.adminToken}` }

interface Event {
  id: string
  type: string
  resource: { type: string, id: string }
  data: Record<string, unknown>
  request_id: string | null
  actor: { type: string, id: string }
  created_at: string
}
interface EventPage { data: Event[], next_cursor: string | null }

async function events (who: ProvisionedTenant, qs = 'limit=200'): Promise<Event[]> {
  const res = await ctx.app.inject(as(who, { method: 'GET', url: `/v1/events?${qs}` }))
  if (res.statusCode !== 200) throw new Error(`listing events failed: ${res.statusCode} ${res.body}`)
  return res.json<EventPage>().data
}

/** Runs `change`, then checks it wrote exactly one event, of `type`, whose data is `state(response)`. */
async function oneEvent (
  t: Test, who: ProvisionedTenant, type: string,
  change: () => Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }>,
  state: (body: Record<string, unknown>) => Record<string, unknown>
): Promise<Event> {
  const before = await events(who)
  const res = await change()
  t.ok(res.statusCode < 300, `${type}: ${res.statusCode} ${res.body}`)
  const after = await events(who)
  t.equal(after.length, before.length + 1, `${type}: exactly one event`)
  const event = after[0]!
  t.equal(event.type, type)
  t.same(event.data, state(res.body === '' ? {} : JSON.parse(res.body) as Record<string, unknown>),
    `${type}: the state as the API shows it`)
  t.equal(event.request_id, res.headers['x-request-id'], `${type}: the request id`)
  return event
}

const tenant = await provisionTenant(ctx, 'eventful')

t.test('each change writes exactly one event with the state the API returned', async (t) => {
  const post = (url: string, payload?: Record<string, unknown>) =>
    () => ctx.app.inject(as(tenant, { method: 'POST', url, ...(payload !== undefined && { payload }) }))
  const same = (body: Record<string, unknown>) => body

  const created = await oneEvent(t, tenant, 'customer.created', post('/v1/customers', { name: 'Ada' }), same)
  t.match(created, {
    resource: { type: 'customer', id: created.data.id },
    actor: { type: 'api_key', id: tenant.keyId },
  })
  const customerId = created.data.id as string
  await oneEvent(t, tenant, 'customer.updated', () => ctx.app.inject(as(tenant, {
    method: 'PATCH', url: `/v1/customers/${customerId}`, payload: { email: 'ada@example.com' },
  })), same)

  const invoice = await oneEvent(t, tenant, 'invoice.created', post('/v1/invoices', {
    customer_id: customerId, currency: 'EUR', lines: [{ description: 'x', quantity: 2, unit_amount_cents: 150 }],
  }), same)
  const invoiceId = invoice.data.id as string
  t.match(invoice.data, { status: 'draft', amount_cents: 300, lines: [{ amount_cents: 300 }] })
  await oneEvent(t, tenant, 'invoice.updated', () => ctx.app.inject(as(tenant, {
    method: 'PATCH', url: `/v1/invoices/${invoiceId}`, payload: { memo: 'thanks' },
  })), same)
  const finalized = await oneEvent(t, tenant, 'invoice.finalized', post(`/v1/invoices/${invoiceId}/finalize`), same)
  t.match(finalized.data, { status: 'open', number: /\S/ })
  await oneEvent(t, tenant, 'invoice.paid', post(`/v1/invoices/${invoiceId}/pay`), same)
  const other = (await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customerId,
      currency: 'EUR',
      lines: [{ description: 'y', quantity: 1, unit_amount_cents: 1 }],
    },
  }))).json<{ id: string }>()
  await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${other.id}/finalize` }))
  await oneEvent(t, tenant, 'invoice.voided', post(`/v1/invoices/${other.id}/void`), same)

  const key = await oneEvent(t, tenant, 'api_key.created', post('/v1/api-keys', { name: 'ci', scopes: ['read'] }),
    // The key as GET /v1/api-keys lists it (the creation response adds the secret, and leaves out last_used_at).
    ({ key: _secret, ...shown }) => ({ ...shown, last_used_at: null }))
  t.notOk('key' in key.data, 'never the secret')
  const keyId = key.data.id as string
  await oneEvent(t, tenant, 'api_key.revoked', () => ctx.app.inject(as(tenant, {
    method: 'DELETE', url: `/v1/api-keys/${keyId}`,
  })), () => ({ id: keyId, name: 'ci', prefix: key.data.prefix, scopes: ['read'], owner_rights: false }))

  const member = await oneEvent(t, tenant, 'member.added', post('/v1/members', { user_id: 'grace', role: 'viewer' }),
    same)
  t.match(member.resource, { type: 'member', id: 'grace' })
  const accepted = await oneEvent(t, tenant, 'member.accepted', () => ctx.app.inject({
    method: 'POST',
    url: '/v1/membership/accept',
    headers: { authorization: `Bearer ${signUserToken({ sub: 'grace', exp: inAnHour() })}`, 'x-tenant-id': tenant.id },
  }), same)
  t.match(accepted.actor, { type: 'user', id: 'grace' })
  await oneEvent(t, tenant, 'member.role_changed', () => ctx.app.inject(as(tenant, {
    method: 'PATCH', url: '/v1/members/grace', payload: { role: 'admin' },
  })), same)
  await oneEvent(t, tenant, 'member.removed', () => ctx.app.inject(as(tenant, {
    method: 'DELETE', url: '/v1/members/grace',
  })), () => ({ ...accepted.data, role: 'admin' }))

  const brief = (await ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/customers', payload: { name: 'Brief' },
  }))).json<{ id: string }>()
  await oneEvent(t, tenant, 'customer.deleted', () => ctx.app.inject(as(tenant, {
    method: 'DELETE', url: `/v1/customers/${brief.id}`,
  })), () => ({ id: brief.id }))

  const got = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/events/${invoice.id}` }))
  t.equal(got.statusCode, 200)
  t.same(got.json(), invoice, 'GET /v1/events/:id answers the listed event')
})

t.test('a refused request writes no event', async (t) => {
  const before = (await events(tenant)).length
  const unknownCustomer = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: '0190a6d2-0000-7000-8000-000000000000',
      currency: 'EUR',
      lines: [{ description: 'y', quantity: 1, unit_amount_cents: 1 }],
    },
  }))
  t.equal(unknownCustomer.statusCode, 422)
  t.equal((await events(tenant)).length, before)
})

t.test('a request that fails after writing its change and event leaves no event', async (t) => {
  // A deferred constraint trigger fails the COMMIT itself: the customer, its audit event and its
  // event have all been written by then, and all roll back.
  await query(ctx.db.adminUrl, `
    CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.name = 'Doomed' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NEW; END $$;
    CREATE CONSTRAINT TRIGGER refuse_doomed AFTER INSERT ON customers DEFERRABLE INITIALLY DEFERRED
      FOR EACH ROW EXECUTE FUNCTION refuse_doomed()`)
  t.teardown(() => query(ctx.db.adminUrl, 'DROP TRIGGER refuse_doomed ON customers; DROP FUNCTION refuse_doomed()'))
  const before = (await events(tenant)).length
  const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Doomed' } }))
  t.equal(res.statusCode, 500)
  t.equal((await events(tenant)).length, before, 'no event')
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM events WHERE data->>'name' = 'Doomed'"), [])
  t.same(await query(ctx.db.adminUrl, "SELECT 1 FROM customers WHERE name = 'Doomed'"), [], 'nor the change')
})

t.test('50 concurrent creates write 50 events', async (t) => {
  const busy = await provisionTenant(ctx)
  const created = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
    const res = await ctx.app.inject(as(busy, { method: 'POST', url: '/v1/customers', payload: { name: `c${i}` } }))
    t.equal(res.statusCode, 201)
    return res.json<{ id: string }>().id
  }))
  const listed = await events(busy, 'limit=200&type=customer.created')
  t.equal(listed.length, 50)
  t.same(listed.map((e) => e.resource.id).sort(), created.sort(), 'one per customer')
})

t.test('pages with a cursor and filters by type, type prefix and time', async (t) => {
  const paged = await provisionTenant(ctx)
  for (let i = 0; i < 5; i++) {
    await ctx.app.inject(as(paged, { method: 'POST', url: '/v1/customers', payload: { name: `p${i}` } }))
  }
  const all = await events(paged)
  t.equal(all.length, 5)
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const qs: string = `limit=2${cursor === null ? '' : `&cursor=${cursor}`}`
    const res = await ctx.app.inject(as(paged, { method: 'GET', url: `/v1/events?${qs}` }))
    const page = res.json<EventPage>()
    seen.push(...page.data.map((e) => e.id))
    cursor = page.next_cursor
  } while (cursor !== null)
  t.same(seen, all.map((e) => e.id), 'every event once, newest first')

  const customerId = all[0]!.resource.id
  await ctx.app.inject(as(paged, { method: 'PATCH', url: `/v1/customers/${customerId}`, payload: { name: 'q' } }))
  t.equal((await events(paged, 'type=customer.updated')).length, 1)
  t.equal((await events(paged, 'type=customer.')).length, 6, 'a prefix ending in a dot')
  t.equal((await events(paged, 'type=invoice.')).length, 0)
  t.equal((await events(paged, 'type=customer_created.')).length, 0, '_ is not a wildcard')
  const middle = all[2]!.created_at
  // Times are shown to the millisecond and kept to the microsecond: the event shown at `middle`
  // itself may fall either side.
  const newest = await events(paged, `created_after=${encodeURIComponent(middle)}`)
  t.ok(newest.length >= 3 && newest.every((e) => e.created_at >= middle), 'created_after')
  const oldest = await events(paged, `created_before=${encodeURIComponent(middle)}`)
  t.ok(oldest.length >= 2 && oldest.every((e) => e.created_at <= middle), 'created_before')
  t.ok(oldest.length + newest.length <= 7, 'no event on both sides but the one at that millisecond')
  for (const bad of ['type=customer', 'type=Customer.created', 'created_after=yesterday', 'cursor=nope']) {
    const res = await ctx.app.inject(as(paged, { method: 'GET', url: `/v1/events?${bad}` }))
    t.equal(res.statusCode, 400, bad)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  }
})

t.test('key and member events are shown to the admin scope only', async (t) => {
  const reader = (await ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/api-keys', payload: { name: 'reader', scopes: ['read'] },
  }))).json<{ key: string }>()
  const seen = await events({ ...tenant, key: reader.key })
  t.ok(seen.length > 0)
  t.ok(seen.every((e) => e.resource.type !== 'api_key' && e.resource.type !== 'member'))
  const keyEvent = (await events(tenant, 'type=api_key.created'))[0]!
  const res = await ctx.app.inject(as({ key: reader.key }, { method: 'GET', url: `/v1/events/${keyEvent.id}` }))
  t.equal(res.statusCode, 404)
})

t.test("tenant B cannot list, get or guess tenant A's events", async (t) => {
  const bob = await provisionTenant(ctx)
  const aliceEvents = await events(tenant)
  t.ok(aliceEvents.length > 0)
  t.same(await events(bob), [], "B's list holds nothing of A's")
  for (const id of [aliceEvents[0]!.id, aliceEvents[0]!.id.replace(/.$/, '0')]) {
    const res = await ctx.app.inject(as(bob, { method: 'GET', url: `/v1/events/${id}` }))
    t.equal(res.statusCode, 404, id)
    t.notMatch(res.body, aliceEvents[0]!.type)
  }
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [bob.id])
  const raw = await client.query('SELECT tenant_id FROM events')
  t.same(raw.rows, [], 'the runtime role bound to B sees none of A\'s events in raw SQL')
  await t.rejects(client.query(`INSERT INTO events (tenant_id, id, type, resource_type, resource_id, data,
    actor_type, actor_id) VALUES ($1, gen_random_uuid(), 'customer.created', 'customer', 'x', '{}', 'system', 'x')`,
  [tenant.id]), { code: '42501' }, 'nor plant one')
  await client.query('ROLLBACK')
  for (const statement of ['DELETE FROM events', "UPDATE events SET type = 'x.y'", 'TRUNCATE events']) {
    await t.rejects(client.query(statement), { code: '42501' }, `${statement}: the runtime role may not`)
  }
})

t.test('the maintenance sweep deletes events past EVENT_RETENTION_DAYS only', async (t) => {
  const aged = await provisionTenant(ctx)
  for (const name of ['old', 'new']) {
    await ctx.app.inject(as(aged, { method: 'POST', url: '/v1/customers', payload: { name } }))
  }
  await query(ctx.db.adminUrl, `UPDATE events SET created_at = now() - interval '31 days'
    WHERE tenant_id = $1 AND data->>'name' = 'old'`, [aged.id])
  const res = await ctx.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: admin })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { events_deleted: 1 })
  t.same((await events(aged)).map((e) => e.data.name), ['new'])
})

t.test('export → erase → import keeps the events; the receipt counts them', async (t) => {
  const moved = await provisionTenant(ctx)
  await ctx.app.inject(as(moved, { method: 'POST', url: '/v1/customers', payload: { name: 'kept' } }))
  const before = await events(moved)
  const exported = await ctx.app.inject({ method: 'GET', url: `/admin/v1/tenants/${moved.id}/export`, headers: admin })
  t.equal(exported.statusCode, 200)
  t.equal(exported.body.split('\n').filter((l) => l.startsWith('{"table":"events"')).length, before.length)
  const erased = await ctx.app.inject({ method: 'DELETE', url: `/admin/v1/tenants/${moved.id}`, headers: admin })
  t.equal(erased.statusCode, 200)
  t.match(erased.json(), { verified: true, rows_removed: { events: before.length } })
  t.same(await query(ctx.db.adminUrl, 'SELECT 1 FROM events WHERE tenant_id = $1', [moved.id]), [])
  const pool = new pg.Pool({ connectionString: ctx.db.ownerUrl, max: 1 })
  t.teardown(() => pool.end())
  await importTenant(pool, () => Readable.from([exported.body]), async (client, tenantId) =>
    ({ shard: await allocateShard(client, tenantId, 'pooled'), placement: 'pooled' }),
  { signingKey: TEST_EXPORT_SIGNING_KEY })
  t.same(await events(moved), before, 'the same events after the round trip')
})

t.test("an invoice's event costs no round trip of its own: it leaves with the invoice and audit inserts", async (t) => {
  const buyer = (await ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/customers', payload: { name: 'Trips' },
  }))).json<{ id: string }>()
  const lines = [{ description: 'z', quantity: 1, unit_amount_cents: 5 }]
  const payload = { customer_id: buyer.id, currency: 'EUR', lines }
  await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload })) // warm the credential cache
  const before = ctx.app.dbTraffic.roundTrips
  const res = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/invoices', payload }))
  t.equal(res.statusCode, 201)
  t.equal(ctx.app.dbTraffic.roundTrips - before, 2,
    'BEGIN, the binding and the invoice, audit and event inserts in one write; then COMMIT')
  const [event] = await events(tenant, 'type=invoice.created&limit=1')
  t.same(event!.data, res.json(), 'with the state the response shows')
})

t.test("the operator's key issue and revocation write events, by the operator", async (t) => {
  const served = await provisionTenant(ctx)
  const issued = await ctx.app.inject({
    method: 'POST', url: `/admin/v1/tenants/${served.id}/api-keys`, headers: admin, payload: { name: 'rescue' },
  })
  t.equal(issued.statusCode, 201, issued.body)
  const { key: _secret, ...shown } = issued.json<{ id: string, key: string }>()
  const revoked = await ctx.app.inject({
    method: 'DELETE', url: `/admin/v1/tenants/${served.id}/api-keys/${shown.id}`, headers: admin,
  })
  t.equal(revoked.statusCode, 204, revoked.body)
  const [revocation, creation] = await events(served, 'type=api_key.')
  t.match(creation, { type: 'api_key.created', actor: { type: 'operator' }, data: { ...shown, last_used_at: null } })
  t.notOk(JSON.stringify(creation).includes(issued.json<{ key: string }>().key), 'never the secret')
  t.match(revocation, { type: 'api_key.revoked', actor: { type: 'operator' }, data: { id: shown.id, name: 'rescue' } })
})
