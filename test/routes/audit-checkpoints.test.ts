import t, { type Test } from 'tap'
import pg from 'pg'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'

// Verification in bounded steps from checkpoints (sql/0015_audit_checkpoints.sql), and the
// operator's full verification that re-examines what the checkpoints skip.
const ctx = await buildTestApp(t)
const operator = { authorization: `Bearer ${ctx.adminToken}` }

interface Break { id: string | null, seq: number, reason: string }
/** An intact chain of n events, verified up to its head. */
const intact = (n: number) => ({ ok: true, events: n, first_broken: null, complete: true, verified_through: n })

interface Verification {
  ok: boolean
  events: number
  first_broken: Break | null
  complete: boolean
  verified_through: number
  from_checkpoint: number
  examined: number
  checkpoint_recorded: number | null
}
interface FullVerification {
  ok: boolean
  events: number
  examined: number
  batches: number
  first_broken: Break | null
  checkpoint_recorded: number | null
}

async function verify (tenant: ProvisionedTenant, qs = ''): Promise<Verification> {
  const res = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/audit-events/verify${qs}` }))
  if (res.statusCode !== 200) throw new Error(`verify: ${res.statusCode} ${res.body}`)
  return res.json<Verification>()
}

async function verifyAll (tenant: { id: string }, qs = ''): Promise<FullVerification> {
  const url = `/admin/v1/tenants/${tenant.id}/audit/verify${qs}`
  const res = await ctx.app.inject({ method: 'POST', url, headers: operator })
  if (res.statusCode !== 200) throw new Error(`full verify: ${res.statusCode} ${res.body}`)
  return res.json<FullVerification>()
}

/** Appends n events quickly: the owner's INSERT under the tenant's binding, chained by the trigger. */
async function appendEvents (tenant: { id: string }, n: number): Promise<void> {
  const client = new pg.Client({ connectionString: ctx.db.ownerUrl })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
    await client.query(`INSERT INTO audit_events (id, actor_type, actor_id, action, resource_type, resource_id)
      SELECT gen_random_uuid(), 'system', 'test', 'bulk.appended', 'bulk', g::text
        FROM generate_series(1, $1::int) g`, [n])
    await client.query('COMMIT')
  } finally {
    await client.end()
  }
}

/** A superuser edit of one event's content, its hash left as it was. */
const alter = (tenant: { id: string }, seq: number) => query(ctx.db.adminUrl,
  "UPDATE audit_events SET actor_id = 'someone-else' WHERE tenant_id = $1 AND seq = $2", [tenant.id, seq])
/** ...and the same edit with the event's own hash recomputed. */
const alterAndRehash = async (tenant: { id: string }, seq: number) => {
  await alter(tenant, seq)
  await query(ctx.db.adminUrl,
    'UPDATE audit_events e SET hash = audit_event_hash(e.prev_hash, e) WHERE tenant_id = $1 AND seq = $2',
    [tenant.id, seq])
}
const checkpoints = async (tenant: { id: string }) => (await query<{ seq: string }>(ctx.db.adminUrl,
  'SELECT seq::text FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY seq', [tenant.id])).map((r) => Number(r.seq))

/** A tenant with `events` events, verified (checkpoint) through `checkpointAt`. */
async function chain (t: Test, events: number, checkpointAt: number): Promise<ProvisionedTenant> {
  const tenant = await provisionTenant(ctx)
  await appendEvents(tenant, checkpointAt - 1)
  t.match(await verify(tenant), { ok: true, checkpoint_recorded: checkpointAt })
  await appendEvents(tenant, events - checkpointAt)
  return tenant
}

t.test('a verification records a checkpoint and the next one starts from it', async (t) => {
  const tenant = await provisionTenant(ctx)
  await appendEvents(tenant, 3)
  t.same(await verify(tenant), { ...intact(4), from_checkpoint: 0, examined: 4, checkpoint_recorded: 4 })
  const [row] = await query(ctx.db.adminUrl, `SELECT 1 FROM audit_checkpoints c
    JOIN audit_events e USING (tenant_id, seq) WHERE c.tenant_id = $1 AND e.hash = c.hash`, [tenant.id])
  t.ok(row, 'the checkpoint holds the hash of the event at its position')

  await appendEvents(tenant, 2)
  t.same(await verify(tenant), { ...intact(6), from_checkpoint: 4, examined: 3, checkpoint_recorded: 6 },
    'events 4 (the checkpointed one, again), 5 and 6')
  t.match(await verify(tenant), { ok: true, from_checkpoint: 6, examined: 1, checkpoint_recorded: null },
    'nothing new: only the checkpointed event')
  t.same(await checkpoints(tenant), [4, 6])

  // Proof that the events before the checkpoint are not re-examined: an edit there goes unseen by the
  // tenant's verification, and is caught by the operator's.
  await alter(tenant, 2)
  t.match(await verify(tenant), { ok: true, from_checkpoint: 6 }, "the tenant's does not look there")
  const caught = { ok: false, first_broken: { seq: 2, reason: /altered/ }, checkpoint_recorded: null }
  t.match(await verifyAll(tenant), caught, "but the operator's does")
})

t.test('a trail longer than one step is verified in several bounded calls', async (t) => {
  const tenant = await provisionTenant(ctx)
  await appendEvents(tenant, 25)
  const steps: Array<Partial<Verification>> = []
  for (let call = 0; call < 5; call++) {
    const step = await verify(tenant, '?max_events=10')
    const { complete, from_checkpoint: from, verified_through: through, examined, events } = step
    steps.push({ complete, from_checkpoint: from, verified_through: through, examined, events })
    t.equal(step.ok, true)
    if (step.complete) break
  }
  t.same(steps, [
    { complete: false, from_checkpoint: 0, verified_through: 10, examined: 10, events: 26 },
    { complete: false, from_checkpoint: 10, verified_through: 20, examined: 11, events: 26 },
    { complete: true, from_checkpoint: 20, verified_through: 26, examined: 7, events: 26 },
  ])
  const tooMany = await ctx.app.inject(as(tenant, { method: 'GET', url: '/v1/audit-events/verify?max_events=10001' }))
  t.equal(tooMany.statusCode, 400, 'the step has a maximum')

  // A break in a later step is found when the walk gets there.
  const other = await provisionTenant(ctx)
  await appendEvents(other, 25)
  await alter(other, 17)
  t.match(await verify(other, '?max_events=10'), { ok: true, complete: false, verified_through: 10 })
  t.match(await verify(other, '?max_events=10'),
    { ok: false, complete: true, verified_through: 16, first_broken: { seq: 17, reason: /altered/ } })
})

t.test('checkpoints cannot make a broken chain pass', async (t) => {
  // A checkpoint whose hash is not its event's.
  let tenant = await chain(t, 6, 4)
  await query(ctx.db.adminUrl, "UPDATE audit_checkpoints SET hash = sha256('forged') WHERE tenant_id = $1 AND seq = 4",
    [tenant.id])
  t.match(await verify(tenant), { ok: false, first_broken: { seq: 4, reason: /checkpoint/ } }, 'an edited checkpoint')
  t.match(await verifyAll(tenant), { ok: false, first_broken: { seq: 4, reason: /checkpoint does not match/ } },
    'and the full verification checks it too')

  // The checkpointed event edited and rehashed, the checkpoint moved along: its successor's link breaks.
  tenant = await chain(t, 6, 4)
  await alterAndRehash(tenant, 4)
  await query(ctx.db.adminUrl, `UPDATE audit_checkpoints c SET hash = e.hash FROM audit_events e
    WHERE e.tenant_id = c.tenant_id AND e.seq = c.seq AND c.tenant_id = $1`, [tenant.id])
  t.match(await verify(tenant), { ok: false, first_broken: { seq: 5, reason: /link/ } })

  // The event before the checkpoint edited and rehashed: the checkpointed event's own link breaks.
  tenant = await chain(t, 6, 4)
  await alterAndRehash(tenant, 3)
  t.match(await verify(tenant), { ok: false, from_checkpoint: 4, first_broken: { seq: 4, reason: /link/ } })

  // The checkpointed event removed, or a checkpoint beyond the chain (the runtime role may insert them).
  tenant = await chain(t, 4, 4)
  await query(ctx.db.adminUrl, 'DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 4', [tenant.id])
  t.match(await verify(tenant), { ok: false, first_broken: { seq: 4, id: null, reason: /missing/ } })
  tenant = await chain(t, 4, 4)
  const app = new pg.Client({ connectionString: ctx.db.appUrl })
  await app.connect()
  t.teardown(() => app.end())
  await app.query('BEGIN')
  await app.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  await app.query("INSERT INTO audit_checkpoints (seq, hash) VALUES (99, sha256('forged'))")
  await app.query('COMMIT')
  t.match(await verify(tenant), { ok: false, first_broken: { seq: 99, reason: /missing/ } })
  t.match(await verifyAll(tenant), { ok: false, first_broken: { seq: 99, reason: /checkpoint's event is missing/ } })
  t.match(await verifyAll(tenant, '?batch_size=10'), { ok: false, first_broken: { seq: 99, reason: /beyond the end/ } },
    'also past the last batch')

  // Removing checkpoints only makes the verification start earlier, and see more.
  tenant = await chain(t, 6, 4)
  t.match(await verify(tenant), { ok: true, checkpoint_recorded: 6 })
  await alter(tenant, 5)
  t.match(await verify(tenant), { ok: true, from_checkpoint: 6 }, 'before the newest checkpoint: not re-examined')
  // ...by the step from the checkpoint; the tenant can walk from the first event itself, and an anchor
  // on the edited event is recomputed, not only compared.
  t.match(await verify(tenant, '?from_seq=1&max_events=3'),
    { ok: true, complete: false, verified_through: 3, checkpoint_recorded: null })
  t.match(await verify(tenant, '?from_seq=4&max_events=3'), { ok: false, first_broken: { seq: 5, reason: /altered/ } })
  const [stored] = await query<{ hash: string }>(ctx.db.adminUrl,
    "SELECT encode(hash, 'hex') AS hash FROM audit_events WHERE tenant_id = $1 AND seq = 5", [tenant.id])
  t.match(await verify(tenant, `?anchor_seq=5&anchor_hash=${stored!.hash}`),
    { ok: false, first_broken: { seq: 5, reason: /anchored event was altered/ } })
  t.match(await verify(tenant, '?from_seq=99'), { ok: false, first_broken: { seq: 98, reason: /missing/ } })
  await query(ctx.db.adminUrl, 'DELETE FROM audit_checkpoints WHERE tenant_id = $1 AND seq = 6', [tenant.id])
  t.match(await verify(tenant), { ok: false, from_checkpoint: 4, first_broken: { seq: 5, reason: /altered/ } })

  // The runtime role adds checkpoints but never changes or removes one.
  const forbidden = [
    "UPDATE audit_checkpoints SET hash = sha256('x')",
    'DELETE FROM audit_checkpoints',
    "INSERT INTO audit_checkpoints (seq, hash, created_at) VALUES (1, sha256('x'), '2001-01-01')",
  ]
  for (const statement of forbidden) {
    await app.query('BEGIN')
    await app.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
    await t.rejects(app.query(statement), { code: '42501' }, statement)
    await app.query('ROLLBACK')
  }
})

t.test("another tenant's checkpoints are invisible and out of reach", async (t) => {
  const a = await chain(t, 4, 4)
  const b = await provisionTenant(ctx)
  const app = new pg.Client({ connectionString: ctx.db.appUrl })
  await app.connect()
  t.teardown(() => app.end())
  await app.query('BEGIN')
  await app.query("SELECT set_config('app.current_tenant_id', $1, true)", [b.id])
  t.same((await app.query('SELECT seq FROM audit_checkpoints')).rows, [], "b sees none of a's")
  await t.rejects(app.query("INSERT INTO audit_checkpoints (tenant_id, seq, hash) VALUES ($1, 1, sha256('x'))", [a.id]),
    { code: '42501' }, 'nor writes one for a')
  await app.query('ROLLBACK')
  t.match(await verify(b), { ok: true, from_checkpoint: 0, examined: 1 },
    "b's verification starts at its own first event")
})

t.test("the operator's full verification walks the whole chain in bounded batches", async (t) => {
  const tenant = await provisionTenant(ctx)
  await appendEvents(tenant, 25)
  t.same(await verifyAll(tenant, '?batch_size=10'),
    { ok: true, events: 26, examined: 28, batches: 3, first_broken: null, checkpoint_recorded: 26 },
    'three batches (each starts at the last event of the one before), then a checkpoint at the head')
  t.match(await verify(tenant), { ok: true, from_checkpoint: 26, examined: 1 },
    "the tenant's verification starts from it")

  // An edit well before the newest checkpoint: only the full verification re-examines it.
  await alter(tenant, 3)
  t.match(await verify(tenant), { ok: true })
  t.match(await verifyAll(tenant, '?batch_size=10'),
    { ok: false, batches: 1, first_broken: { seq: 3, reason: /altered/ }, checkpoint_recorded: null })

  const unknown = '/admin/v1/tenants/0190a6d2-0000-7000-8000-000000000000/audit/verify'
  t.equal((await ctx.app.inject({ method: 'POST', url: unknown, headers: operator })).statusCode, 404)
  const url = `/admin/v1/tenants/${tenant.id}/audit/verify`
  t.equal((await ctx.app.inject({ method: 'POST', url })).statusCode, 401)
  const byTenant = await ctx.app.inject(as(tenant, { method: 'POST', url }))
  t.equal(byTenant.statusCode, 401, "a tenant's key is no operator token")
  const tooMany = `/admin/v1/tenants/${tenant.id}/audit/verify?batch_size=10001`
  t.equal((await ctx.app.inject({ method: 'POST', url: tooMany, headers: operator })).statusCode, 400)
})
