import { PassThrough } from 'node:stream'
import t from 'tap'
import pg from 'pg'
import { as, buildTestApp, provisionTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { inAnHour, signUserToken } from '../helpers/tokens.ts'
import { addMember } from '../helpers/members.ts'

// The app's log lines, for the head anchor (`audit_appended`).
const logLines: Array<Record<string, unknown>> = []
const logStream = new PassThrough()
logStream.on('data', (chunk: Buffer) => {
  for (const line of chunk.toString().split('\n')) {
    if (line !== '') logLines.push(JSON.parse(line) as Record<string, unknown>)
  }
})
const ctx = await buildTestApp(t, { LOG_LEVEL: 'info' }, undefined, { logStream })
const appendedLines = (tenantId: string) =>
  logLines.filter((l) => l.event === 'audit_appended' && l.tenant === tenantId)

/** An intact chain of n events, verified up to its head. */
const intact = (n: number) => ({ ok: true, events: n, first_broken: null, complete: true, verified_through: n })

interface Verification {
  ok: boolean
  events: number
  first_broken: { id: string | null, seq: number, reason: string } | null
  complete: boolean
  verified_through: number
  from_checkpoint: number
  examined: number
  checkpoint_recorded: number | null
}

interface Event {
  id: string,
  seq: number,
  action: string,
  actor: { type: string, id: string },
  resource: { type: string, id: string },
  request_id: string | null,
  hash: string,
}

async function events (who: { key: string }): Promise<Event[]> {
  const res = await ctx.app.inject(as(who, { method: 'GET', url: '/v1/audit-events?limit=200' }))
  return res.json<{ data: Event[] }>().data
}

t.test('every change writes an audit event with actor, resource and request id', async (t) => {
  const tenant = await provisionTenant(ctx)
  const c = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'A' },
    headers: { 'x-request-id': 'req-create-customer' },
  }))
  const customerId = c.json<{ id: string }>().id
  await ctx.app.inject(as(tenant, { method: 'PATCH', url: `/v1/customers/${customerId}`, payload: { name: 'B' } }))
  const inv = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: customerId,
      currency: 'EUR',
      lines: [{ description: 'x', quantity: 1, unit_amount_cents: 5 }],
    },
  }))
  const invoiceId = inv.json<{ id: string }>().id
  await ctx.app.inject(as(tenant, { method: 'PATCH', url: `/v1/invoices/${invoiceId}`, payload: { memo: 'm' } }))
  for (const action of ['finalize', 'pay']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: `/v1/invoices/${invoiceId}/${action}` }))
  }
  const key = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/api-keys',
    payload: { name: 'k', scopes: ['read'] },
  }))
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/api-keys/${key.json<{ id: string }>().id}` }))
  await addMember(ctx, tenant, { user_id: 'ann', role: 'member' })
  await ctx.app.inject({
    method: 'POST',
    url: '/v1/customers',
    headers: { authorization: `Bearer ${signUserToken({ sub: 'ann', tid: tenant.id, exp: inAnHour() })}` },
    payload: { name: 'by Ann' },
  })
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: '/v1/members/ann' }))
  const second = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'gone' } }))
  await ctx.app.inject(as(tenant, { method: 'DELETE', url: `/v1/customers/${second.json<{ id: string }>().id}` }))

  const trail = await events(tenant)
  t.same(trail.map((e) => e.action).reverse(), [
    'tenant.created', 'customer.created', 'customer.updated', 'invoice.created', 'invoice.updated',
    'invoice.finalized', 'invoice.paid', 'api_key.created', 'api_key.revoked', 'member.added', 'member.accepted',
    'customer.created', 'member.removed', 'customer.created', 'customer.deleted',
  ])
  t.same(trail.map((e) => e.seq), Array.from({ length: trail.length }, (_, i) => trail.length - i),
    'seq runs without gaps')
  const created = trail.find((e) => e.request_id === 'req-create-customer')
  t.match(created, {
    action: 'customer.created',
    actor: { type: 'api_key', id: tenant.keyId },
    resource: { type: 'customer', id: customerId },
  })
  t.match(trail.find((e) => e.actor.type === 'user'), { actor: { id: 'ann' }, action: 'customer.created' })
  t.match(trail.at(-1), { action: 'tenant.created', actor: { type: 'operator' } })
})

t.test('a failed change leaves no audit event', async (t) => {
  const tenant = await provisionTenant(ctx)
  const before = (await events(tenant)).length
  await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: '0190a6d2-0000-7000-8000-000000000000',
      currency: 'EUR',
      lines: [{ description: 'x', quantity: 1, unit_amount_cents: 5 }],
    },
  }))
  t.equal((await events(tenant)).length, before)
})

t.test('the runtime role can insert and read audit events but never change or remove them', async (t) => {
  const tenant = await provisionTenant(ctx)
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  t.equal((await client.query('SELECT 1 FROM audit_events')).rowCount, 1)
  await t.rejects(client.query("UPDATE audit_events SET action = 'nothing'"), { code: '42501' })
  await client.query('ROLLBACK; BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  await t.rejects(client.query('DELETE FROM audit_events'), { code: '42501' })
  await client.query('ROLLBACK; BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  await t.rejects(client.query('UPDATE audit_heads SET seq = 0'), { code: '42501' }, 'nor rewind the chain head')
  await client.query('ROLLBACK; BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  // The runtime role cannot even supply seq or hash: the trigger alone chains an event.
  await t.rejects(client.query(`INSERT INTO audit_events
      (id, seq, hash, actor_type, actor_id, action, resource_type, resource_id)
    VALUES (gen_random_uuid(), 999, '\\xdead', 'system', 'x', 'forged', 'x', 'x')`), { code: '42501' })
  await client.query('ROLLBACK; BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  await client.query(`INSERT INTO audit_events (id, actor_type, actor_id, action, resource_type, resource_id)
    VALUES (gen_random_uuid(), 'system', 'x', 'appended', 'x', 'x')`)
  const { rows: [appended] } = await client.query(
    "SELECT seq, prev_hash IS NOT NULL AS linked FROM audit_events WHERE action = 'appended'")
  t.same({ seq: Number(appended.seq), linked: appended.linked }, { seq: 2, linked: true },
    'chained after the first event')
  await client.query('ROLLBACK')
})

t.test('verification passes on an intact chain and reports the first broken link after its checkpoint', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const name of ['one', 'two', 'three']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  }
  const verify = async () =>
    (await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))).json<Verification>()
  t.same(await verify(), { ...intact(4), from_checkpoint: 0, examined: 4, checkpoint_recorded: 4 })

  // Two more events after the checkpoint; someone with database access edits the first of them.
  for (const name of ['four', 'five']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  }
  await query(ctx.db.adminUrl, "UPDATE audit_events SET actor_id = 'someone-else' WHERE tenant_id = $1 AND seq = 5",
    [tenant.id])
  const altered = { first_broken: { seq: 5, reason: /altered/ }, verified_through: 4, checkpoint_recorded: null }
  t.match(await verify(), { ok: false, from_checkpoint: 4, ...altered })
  // ...and recomputes its hash: the next link breaks instead.
  await query(ctx.db.adminUrl,
    'UPDATE audit_events e SET hash = audit_event_hash(e.prev_hash, e) WHERE tenant_id = $1 AND seq = 5', [tenant.id])
  t.match(await verify(), { ok: false, first_broken: { seq: 6, reason: /link/ } })
  const [checkpoints] = await query<{ n: number }>(ctx.db.adminUrl,
    'SELECT count(*)::int AS n FROM audit_checkpoints WHERE tenant_id = $1', [tenant.id])
  t.equal(checkpoints?.n, 1, 'a verification that found a break records no checkpoint')
})

t.test('verification notices deleted events, in the middle or at the end', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const name of ['one', 'two', 'three']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  }
  const verify = async () =>
    (await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))).json<Verification>()
  await query(ctx.db.adminUrl, 'DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 4', [tenant.id])
  t.match(await verify(), { ok: false, first_broken: { seq: 4, reason: /end of the chain/ } })
  await query(ctx.db.adminUrl, 'DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 2', [tenant.id])
  t.match(await verify(), { ok: false, first_broken: { seq: 3, reason: /missing/ } })
})

t.test("a tenant's audit trail holds only its own events", async (t) => {
  const a = await provisionTenant(ctx)
  const b = await provisionTenant(ctx)
  await ctx.app.inject(as(a, { method: 'POST', url: '/v1/customers', payload: { name: 'secret' } }))
  const trail = await events(b)
  t.same(trail.map((e) => e.action), ['tenant.created'])
  t.equal(trail[0]!.resource.id, b.id)
})

t.test('the runtime role cannot backdate an audit event: the database sets its time', async (t) => {
  const tenant = await provisionTenant(ctx)
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  t.teardown(() => client.end())
  const insert = (withTime: boolean) => client.query(`INSERT INTO audit_events
      (id, ${withTime ? 'occurred_at, ' : ''}actor_type, actor_id, action, resource_type, resource_id)
    VALUES (gen_random_uuid(), ${withTime ? "'2001-01-01T00:00:00Z', " : ''}'system', 'x', 'backdated', 'x', 'x')
    RETURNING occurred_at`)
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  await t.rejects(insert(true), { code: '42501' }, 'it may not supply occurred_at')
  await client.query('ROLLBACK')

  // Even with the privilege granted by mistake, the trigger ignores the time supplied.
  await query(ctx.db.adminUrl, 'GRANT INSERT (occurred_at) ON audit_events TO app')
  t.teardown(() => query(ctx.db.adminUrl, 'REVOKE INSERT (occurred_at) ON audit_events FROM app'))
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  const { rows: [row] } = await insert(true)
  await client.query('COMMIT')
  t.ok(Math.abs((row.occurred_at as Date).getTime() - Date.now()) < 60_000,
    `stored ${(row.occurred_at as Date).toISOString()}, not 2001`)
  const verify = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify' }))
  t.match(verify.json(), { ok: true, events: 2 }, 'and the event is chained with the time the database set')
})

t.test('every committed audit event is logged with its chain position and hash; ' +
  'a failed change logs none', async (t) => {
  const tenant = await provisionTenant(ctx)
  const created = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/customers',
    payload: { name: 'logged' },
  }))
  t.equal(created.statusCode, 201)
  const trail = await events(tenant)
  const logged = appendedLines(tenant.id)
  t.same(logged.map((l) => ({ seq: l.seq, hash: l.hash })), trail.map((e) => ({ seq: e.seq, hash: e.hash })).reverse(),
    'the operator\'s tenant.created and the customer.created, with the hashes the API reports')
  await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: {
      customer_id: '0190a6d2-0000-7000-8000-000000000000',
      currency: 'EUR',
      lines: [{ description: 'x', quantity: 1, unit_amount_cents: 5 }],
    },
  }))
  t.equal(appendedLines(tenant.id).length, 2, 'a rolled-back event is not logged')
})

t.test('a chain rewritten as a whole passes the chain check but fails against an anchor from the log', async (t) => {
  const tenant = await provisionTenant(ctx)
  for (const name of ['one', 'two', 'three']) {
    await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name } }))
  }
  const anchor = appendedLines(tenant.id).find((l) => l.seq === 2)!
  const verify = async (qs = '') =>
    (await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/audit-events/verify${qs}` })))
  const anchored = `?anchor_seq=${String(anchor.seq)}&anchor_hash=${String(anchor.hash)}`
  t.match((await verify(anchored)).json(), { ok: true, events: 4, first_broken: null, checkpoint_recorded: 4 },
    'the intact chain matches its anchor')

  // Someone with owner access changes who did what and recomputes every hash and the head.
  await query(ctx.db.adminUrl, `DO $$
    DECLARE r record; prev bytea := NULL;
    BEGIN
      FOR r IN SELECT id FROM audit_events WHERE tenant_id = '${tenant.id}' ORDER BY seq LOOP
        UPDATE audit_events SET actor_id = 'someone-else', prev_hash = prev
         WHERE tenant_id = '${tenant.id}' AND id = r.id;
        UPDATE audit_events e SET hash = audit_event_hash(e.prev_hash, e)
         WHERE tenant_id = '${tenant.id}' AND id = r.id RETURNING hash INTO prev;
      END LOOP;
      UPDATE audit_heads SET hash = prev WHERE tenant_id = '${tenant.id}';
    END $$`)
  t.match((await verify()).json(), { ok: false, first_broken: { seq: 4, reason: /checkpoint/ } },
    'the checkpoint still holds the hash event 4 had')
  // ...unless the checkpoints are rewritten too (or removed): then nothing inside the database tells.
  await query(ctx.db.adminUrl, 'DELETE FROM audit_checkpoints WHERE tenant_id = $1', [tenant.id])
  t.match((await verify()).json(), { ok: true, events: 4, first_broken: null }, 'undetectable from inside the database')
  t.match((await verify(anchored)).json(), { ok: false, first_broken: { seq: 2, reason: /anchor/ } },
    'detected against the logged hash')
  t.match((await verify('?anchor_seq=99&anchor_hash=' + 'a'.repeat(64))).json(),
    { ok: false, first_broken: { seq: 99, id: null, reason: /missing/ } })

  const half = await verify('?anchor_seq=2')
  t.equal(half.statusCode, 400, 'anchor_seq needs anchor_hash')
  t.match(half.json(), { errors: [{ path: 'querystring/anchor_hash' }] })
  t.equal((await verify('?anchor_seq=2&anchor_hash=xyz')).statusCode, 400, 'a hash is 64 hex digits')
})

t.test('the audit trail and its verification need the admin scope, like members and keys', async (t) => {
  const tenant = await provisionTenant(ctx)
  const key = async (scopes: string[]) => (await ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/api-keys', payload: { name: scopes.join('+'), scopes },
  }))).json<{ key: string }>()
  const user = async (role: string) => {
    const payload = { user_id: `audit-${role}`, role }
    await addMember(ctx, tenant, payload)
    return { authorization: `Bearer ${signUserToken({ sub: `audit-${role}`, tid: tenant.id, exp: inAnHour() })}` }
  }
  const refused: Array<[string, Record<string, string>]> = [
    ['read key', { authorization: `Bearer ${(await key(['read'])).key}` }],
    ['write key', { authorization: `Bearer ${(await key(['write'])).key}` }],
    ['read and write key', { authorization: `Bearer ${(await key(['read', 'write'])).key}` }],
    ['viewer', await user('viewer')],
    ['member', await user('member')],
  ]
  const allowed: Array<[string, Record<string, string>]> = [
    ['admin key without owner rights', { authorization: `Bearer ${(await key(['read', 'admin'])).key}` }],
    ['admin member', await user('admin')],
  ]
  for (const [who, headers] of refused) {
    for (const url of ['/v1/audit-events', '/v1/audit-events/verify']) {
      const requestId = `audit-scope-${who.replaceAll(' ', '-')}-${url.length}`
      const res = await ctx.app.inject({ method: 'GET', url, headers: { ...headers, 'x-request-id': requestId } })
      t.equal(res.statusCode, 403, `${who}: GET ${url}`)
      t.notMatch(res.body, /"actor"|"seq"|audit-(viewer|member|admin)/, 'nothing of the trail in the refusal')
      t.match(logLines.filter((l) => l.reqId === requestId && l.event === 'access_denied'),
        [{ status: 403, reason: 'missing admin scope' }], `${who}: logged`)
    }
  }
  for (const [who, headers] of allowed) {
    const list = await ctx.app.inject({ method: 'GET', url: '/v1/audit-events', headers })
    t.equal(list.statusCode, 200, `${who}: the list`)
    const verification = await ctx.app.inject({ method: 'GET', url: '/v1/audit-events/verify', headers })
    t.match(verification.json(), { ok: true }, `${who}: the verification`)
  }
})
