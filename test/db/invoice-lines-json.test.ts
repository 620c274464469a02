import pg from 'pg'
import t from 'tap'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { shardOf, someoneWaits, waitUntil } from '../helpers/operator.ts'

// invoices.lines is a copy of invoice_lines that the database keeps (sql/0014): every way of
// writing lines must leave the copy equal to the rows, and nobody may write the copy itself.
const ctx = await buildTestApp(t)
const alice = await provisionTenant(ctx)
const bob = await provisionTenant(ctx)

interface Line { description: string, quantity: number, unit_amount_cents: number, amount_cents: number }

async function createInvoice (
  tenant: ProvisionedTenant,
  lines: Array<{ description: string, quantity: number, unit_amount_cents: number }>
): Promise<{ id: string, lines: Line[] }> {
  const customer = (await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'C' } })))
    .json<{ id: string }>()
  const res = await ctx.app.inject(as(tenant, {
    method: 'POST',
    url: '/v1/invoices',
    payload: { customer_id: customer.id, currency: 'EUR', lines },
  }))
  if (res.statusCode !== 201) throw new Error(`create: ${res.statusCode} ${res.body}`)
  return res.json()
}

/** The stored copy and the lines recomputed from invoice_lines, read as the superuser. */
async function copyAndRows (invoiceId: string): Promise<{ copy: Line[], rows: Line[] }> {
  const [row] = await query<{ copy: Line[], rows: Line[] }>(ctx.db.adminUrl, `
    SELECT i.lines AS copy,
           (SELECT coalesce(json_agg(json_build_object('description', l.description, 'quantity', l.quantity,
                   'unit_amount_cents', l.unit_amount_cents, 'amount_cents', l.amount_cents) ORDER BY l.position), '[]')
              FROM invoice_lines l WHERE l.tenant_id = i.tenant_id AND l.invoice_id = i.id) AS rows
      FROM invoices i WHERE i.id = $1`, [invoiceId])
  if (row === undefined) throw new Error(`no invoice ${invoiceId}`)
  return row
}

/** A runtime-role connection bound to a tenant, inside an open transaction. */
async function openAs (tenant: ProvisionedTenant): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: ctx.db.appUrl })
  await client.connect()
  await client.query('BEGIN')
  await client.query("SELECT set_config('app.current_tenant_id', $1, true)", [tenant.id])
  return client
}

/** Runs statements as the runtime role, bound to a tenant, in one transaction (rolled back on error). */
async function asApp (tenant: ProvisionedTenant, statements: Array<[string, unknown[]]>): Promise<void> {
  const client = await openAs(tenant)
  try {
    for (const [text, values] of statements) await client.query(text, values)
    await client.query('COMMIT')
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {})
    throw error
  } finally {
    await client.end()
  }
}

t.test('created, read, listed and replaced through the API, the copy is the rows', async (t) => {
  const invoice = await createInvoice(alice, [
    { description: 'b', quantity: 2, unit_amount_cents: 5 },
    { description: 'a', quantity: 1, unit_amount_cents: 7 },
  ])
  const expected = [
    { description: 'b', quantity: 2, unit_amount_cents: 5, amount_cents: 10 },
    { description: 'a', quantity: 1, unit_amount_cents: 7, amount_cents: 7 },
  ]
  t.same(invoice.lines, expected, 'the create response shows the lines in order')
  t.same(await copyAndRows(invoice.id), { copy: expected, rows: expected }, 'stored copy = rows')
  const read = (await ctx.app.inject(as(alice, { method: 'GET', url: `/v1/invoices/${invoice.id}` })))
    .json<{ lines: Line[] }>()
  t.same(read.lines, expected, 'GET reads the copy')
  const listed = (await ctx.app.inject(as(alice, { method: 'GET', url: '/v1/invoices' })))
    .json<{ data: Array<{ id: string, lines: Line[] }> }>()
  t.same(listed.data.find((i) => i.id === invoice.id)?.lines, expected, 'the list reads the copy')
  const patched = await ctx.app.inject(as(alice, {
    method: 'PATCH',
    url: `/v1/invoices/${invoice.id}`,
    payload: { lines: [{ description: 'c', quantity: 3, unit_amount_cents: 3 }] },
  }))
  t.equal(patched.statusCode, 200)
  const replaced = [{ description: 'c', quantity: 3, unit_amount_cents: 3, amount_cents: 9 }]
  t.same(patched.json<{ lines: Line[] }>().lines, replaced)
  t.same(await copyAndRows(invoice.id), { copy: replaced, rows: replaced }, 'replacing the lines rewrote the copy')
})

t.test('lines written in raw SQL by the runtime role keep the copy current, statement by statement', async (t) => {
  const invoice = await createInvoice(alice, [{ description: 'one', quantity: 1, unit_amount_cents: 1 }])
  const shard = await shardOf(ctx, alice.id)
  await asApp(alice, [
    [
      'INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
        'VALUES ($1, 3, $2, 1, 4, 4), ($1, 2, $3, 2, 2, 4)',
      [invoice.id, 'three', 'two'],
    ],
  ])
  let state = await copyAndRows(invoice.id)
  t.same(state.copy.map((l) => l.description), ['one', 'two', 'three'], 'inserted lines appear, in position order')
  t.same(state.copy, state.rows)
  await asApp(alice, [['DELETE FROM invoice_lines WHERE invoice_id = $1 AND position = 1', [invoice.id]]])
  state = await copyAndRows(invoice.id)
  t.same(state.copy.map((l) => l.description), ['two', 'three'], 'a deleted line disappears')
  t.same(state.copy, state.rows)
  await asApp(alice, [['DELETE FROM invoice_lines WHERE invoice_id = $1', [invoice.id]]])
  t.same((await copyAndRows(invoice.id)).copy, [], 'no lines: an empty array')
  // The owner may correct a line by hand; the copy follows (bound to the tenant, as the policy requires).
  await query(ctx.db.ownerUrl, `BEGIN; SELECT set_config('app.current_tenant_id', '${alice.id}', true);
    INSERT INTO invoice_lines
        (tenant_id, shard, invoice_id, position, description, quantity, unit_amount_cents, amount_cents)
      VALUES ('${alice.id}', ${shard}, '${invoice.id}', 1, 'x', 1, 1, 1);
    UPDATE invoice_lines SET description = 'corrected' WHERE invoice_id = '${invoice.id}'; COMMIT`)
  state = await copyAndRows(invoice.id)
  t.same(state.copy.map((l) => l.description), ['corrected'], 'an UPDATE of a line rewrites the copy')
  t.same(state.copy, state.rows)
})

t.test('a failed write leaves the copy as it was', async (t) => {
  const invoice = await createInvoice(alice, [{ description: 'kept', quantity: 1, unit_amount_cents: 1 }])
  const before = await copyAndRows(invoice.id)
  await t.rejects(asApp(alice, [
    [
      'INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
        'VALUES ($1, 2, $2, 1, 1, 1)',
      [invoice.id, 'added'],
    ],
    [
      'INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
        'VALUES ($1, 3, $2, 0, 1, 0)',
      [invoice.id, 'bad quantity'],
    ],
  ]), { code: '23514' })
  t.same(await copyAndRows(invoice.id), before, 'the first statement rolled back with the second, its copy too')
})

t.test('nobody writes the copy directly, and no tenant reaches another tenant\'s copy', async (t) => {
  const invoice = await createInvoice(alice, [{ description: 'alice', quantity: 1, unit_amount_cents: 1 }])
  const before = await copyAndRows(invoice.id)
  await t.rejects(asApp(alice, [["UPDATE invoices SET lines = '[]' WHERE id = $1", [invoice.id]]]), { code: '42501' },
    'no UPDATE privilege on the copy')
  const customer = (await ctx.app.inject(as(alice, { method: 'POST', url: '/v1/customers', payload: { name: 'C' } })))
    .json<{ id: string }>()
  await t.rejects(asApp(alice, [[
    'INSERT INTO invoices (id, customer_id, currency, amount_cents, lines) ' +
      "VALUES (gen_random_uuid(), $1, 'EUR', 0, '[{\"description\":\"forged\"}]')",
    [customer.id],
  ]]), { code: '42501' }, 'no INSERT privilege on the copy')
  await t.rejects(asApp(alice, [['SELECT invoices_sync_lines()', []]]), { code: /^(42501|0A000|42883)$/ },
    'the trigger function is not callable')
  await t.rejects(asApp(alice, [['SELECT invoice_lines_json($1, $2, 0)', [alice.id, invoice.id]]]), { code: '42501' },
    'nor the aggregate')
  // Bob, bound to himself, adds a line naming Alice's invoice: the policy refuses the row, so the
  // trigger never runs for it; Bob deleting or changing Alice's lines touches no row.
  await t.rejects(asApp(bob, [
    [
      'INSERT INTO invoice_lines ' +
        '(tenant_id, invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
        'VALUES ($1, $2, 9, $3, 1, 1, 1)',
      [alice.id, invoice.id, 'from bob'],
    ],
  ]), { code: '42501' })
  await t.rejects(asApp(bob, [
    [
      'INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
        'VALUES ($1, 9, $2, 1, 1, 1)',
      [invoice.id, 'from bob'],
    ],
  ]), { code: '23503' }, "Bob's own line cannot point at Alice's invoice (composite foreign key)")
  await asApp(bob, [['DELETE FROM invoice_lines WHERE invoice_id = $1', [invoice.id]]])
  t.same(await copyAndRows(invoice.id), before, "Alice's lines and copy are untouched")
})

t.test('moved to a dedicated partition, the copy travels with the invoice', async (t) => {
  const invoice = await createInvoice(bob, [{ description: 'moving', quantity: 2, unit_amount_cents: 3 }])
  const moved = await ctx.app.inject({
    method: 'PUT',
    url: `/admin/v1/tenants/${bob.id}/placement`,
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    payload: { placement: 'dedicated' },
  })
  t.equal(moved.statusCode, 200, moved.body)
  const state = await copyAndRows(invoice.id)
  t.same(state.copy, [{ description: 'moving', quantity: 2, unit_amount_cents: 3, amount_cents: 6 }])
  t.same(state.copy, state.rows)
  const read = (await ctx.app.inject(as(bob, { method: 'GET', url: `/v1/invoices/${invoice.id}` })))
    .json<{ lines: Line[] }>()
  t.same(read.lines, state.rows, 'read from its new partition')
})

t.test('two transactions adding lines to one invoice at once: the copy keeps both', async (t) => {
  const invoice = await createInvoice(alice, [{ description: 'first', quantity: 1, unit_amount_cents: 1 }])
  const insert = 'INSERT INTO invoice_lines ' +
    '(invoice_id, position, description, quantity, unit_amount_cents, amount_cents) VALUES ($1, $2, $3, 1, 1, 1)'
  const a = await openAs(alice)
  const b = await openAs(alice)
  t.teardown(async () => { await a.end(); await b.end() })
  await a.query(insert, [invoice.id, 2, 'from a'])
  const pending = b.query(insert, [invoice.id, 3, 'from b']) // waits for a's lock on the invoice
  await waitUntil('b waits for the invoice row', async () => someoneWaits(ctx, /from b|INSERT INTO invoice_lines/))
  await a.query('COMMIT')
  await pending
  await b.query('COMMIT')
  const state = await copyAndRows(invoice.id)
  t.same(state.rows.map((l) => l.description), ['first', 'from a', 'from b'])
  t.same(state.copy, state.rows, "b's recomputation saw a's committed line")
})

t.test('a line written where the copy cannot follow is refused, not left stale', async (t) => {
  const invoice = await createInvoice(alice, [{ description: 'kept', quantity: 1, unit_amount_cents: 1 }])
  const shard = await shardOf(ctx, alice.id)
  const before = await copyAndRows(invoice.id)
  const line = `INSERT INTO invoice_lines
      (tenant_id, shard, invoice_id, position, description, quantity, unit_amount_cents, amount_cents)
    VALUES ('${alice.id}', ${shard}, '${invoice.id}', 5, 'by hand', 1, 1, 1)`
  // A superuser ignores the policy but the trigger, running as the owner, would not see the invoice.
  await t.rejects(query(ctx.db.adminUrl, line), { code: '42501', message: /written while no tenant is bound/ },
    'no tenant bound')
  await t.rejects(
    query(ctx.db.adminUrl, `BEGIN; SELECT set_config('app.current_tenant_id', '${bob.id}', true); ${line}; COMMIT`),
    { code: '42501' }, 'another tenant bound')
  await t.rejects(query(ctx.db.adminUrl, `DELETE FROM invoice_lines WHERE invoice_id = '${invoice.id}'`),
    { code: '42501' }, 'deleting with no tenant bound')
  t.same(await copyAndRows(invoice.id), before, 'nothing changed')
  // The composite foreign key is deferrable: a line before its invoice would leave the new invoice's
  // copy empty. The trigger refuses the line instead.
  const early = await openAs(alice)
  t.teardown(async () => { await early.end() })
  await early.query('SET CONSTRAINTS ALL DEFERRED')
  await t.rejects(early.query(
    'INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_amount_cents, amount_cents) ' +
      "VALUES ('0190a6d2-0000-7000-8000-0000000000aa', 1, 'early', 1, 1, 1)"),
  { code: '23503', message: /before their invoice/ })
  await early.query('ROLLBACK')
})

t.test('exports leave the copy out and imports rebuild it from the lines', async (t) => {
  await createInvoice(alice, [{ description: 'exported', quantity: 4, unit_amount_cents: 2 }])
  const res = await ctx.app.inject({
    method: 'GET',
    url: `/admin/v1/tenants/${alice.id}/export`,
    headers: { authorization: `Bearer ${ctx.adminToken}` },
  })
  t.equal(res.statusCode, 200)
  const invoices = res.body.trimEnd().split('\n')
    .map((l) => JSON.parse(l) as { table: string, row: Record<string, unknown> })
    .filter((l) => l.table === 'invoices')
  t.ok(invoices.length > 0)
  t.notOk(invoices.some((l) => Object.hasOwn(l.row, 'lines')), 'no invoice row carries the derived copy')
})
