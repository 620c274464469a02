import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import { withTenantTransaction } from '../../src/db/tenant-transaction.ts'
import { newId } from '../../src/ids.ts'
import { runTenantExport, tenantExportJob } from '../../src/jobs/tenant-export-job.ts'
import type { JobContext, TenantJob } from '../../src/jobs/types.ts'
import { sealSecret } from '../../src/webhooks/secret-box.ts'
import { as, buildTestApp, provisionTenant, type ProvisionedTenant } from '../helpers/app.ts'
import { query } from '../helpers/db.ts'
import { addMember } from '../helpers/members.ts'
import { operator } from '../helpers/operator.ts'
import { applyQuotaDefaults } from '../../src/limits/limits.ts'

// The job as the worker runs it (src/jobs/job-worker.ts): called with a pool of the runtime role, so
// that row-level security applies to everything it reads and writes.

// Key usage is written back to api_keys (last_used_at) only at close: the exports compared stay still.
const ctx = await buildTestApp(t, { KEY_USAGE_FLUSH_MS: 3_600_000 })
const appPool = new pg.Pool({ connectionString: ctx.db.appUrl, max: 2 })
t.teardown(() => appPool.end())
const context: JobContext = {
  pool: appPool, log: ctx.app.log, signal: new AbortController().signal, quotaDefaults: '{}',
}
const webhookKey = randomBytes(32)

const tenant = await provisionTenant(ctx, 'self-exported')
const other = await provisionTenant(ctx, 'neighbour')
const secrets = await populate(tenant)
await populate(other)

/** Customers, invoices, a member, an idempotency key, and a webhook endpoint with its deliveries. */
async function populate (who: ProvisionedTenant): Promise<{ sealed: string[] }> {
  const endpointId = newId()
  const sealed = [0, 1].map((i) => sealSecret(webhookKey, `whsec_${i}`, `${who.id}:${endpointId}`))
  await withTenantTransaction(appPool, who.id, async ({ db }) => {
    await applyQuotaDefaults(db, '{}') // as a request's binding sets them (sql/0021)
    await db.insertInto('webhook_endpoints').values({
      id: endpointId,
      url: 'https://hooks.example/rowfence',
      event_types: ['*'],
      secret_sealed: sealed[0]!,
      previous_secret_sealed: sealed[1]!,
      previous_secret_expires_at: new Date(Date.now() + 3_600_000),
    }).execute()
  })
  const post = async (url: string, payload: Record<string, unknown>, headers: Record<string, string> = {}) =>
    (await ctx.app.inject(as(who, { method: 'POST', url, payload, headers }))).json<{ id: string }>()
  const customer = await post('/v1/customers', { name: 'Ünïcødé "quoted"', email: 'a@example.com' })
  for (let i = 0; i < 12; i++) {
    const invoice = await post('/v1/invoices', {
      customer_id: customer.id,
      currency: 'EUR',
      memo: `invoice ${i} ${'x'.repeat(200)}`,
      lines: [
        { description: 'a', quantity: 3, unit_amount_cents: 1234 },
        { description: 'b', quantity: 1, unit_amount_cents: 9007199254 },
      ],
    })
    if (i % 2 === 0) await post(`/v1/invoices/${invoice.id}/finalize`, {})
  }
  await addMember(ctx, who, { user_id: `owner-of-${who.slug}@idp`, role: 'owner' })
  await post('/v1/customers', { name: 'keyed' }, { 'idempotency-key': 'export-me' })
  // Attempts of two of the deliveries the events fanned out to the endpoint.
  await withTenantTransaction(appPool, who.id, async ({ db }) => {
    const deliveries = await db.selectFrom('webhook_deliveries').select('id').orderBy('id').limit(2).execute()
    for (const [i, attempt] of [1, 2, 3, 4, 1].entries()) {
      await db.insertInto('webhook_attempts').values({
        delivery_id: deliveries[i < 4 ? 0 : 1]!.id,
        attempt,
        started_at: new Date(),
        status_code: 500,
        latency_ms: 12,
        error: 'HTTP 500',
        response_excerpt: 'oops',
      }).execute()
    }
  })
  return { sealed }
}

// Small chunks, and pages of 3 rows: every table of more than 3 rows is read in pages, by its key.
const small = { chunkBytes: 2048, pageRows: 3 }

const job = (who: { id: string }, ref: string, attempt = 1): TenantJob =>
  ({ tenantId: who.id, ref, jobId: randomBytes(4).toString('hex'), attempt, maxAttempts: 10 })

async function requestExport (who: ProvisionedTenant): Promise<string> {
  const res = await ctx.app.inject(as(who, { method: 'POST', url: '/v1/exports' }))
  if (res.statusCode !== 202) throw new Error(`export request failed: ${res.statusCode} ${res.body}`)
  return res.json<{ id: string }>().id
}

interface ExportView {
  status: string
  progress: { rows_done: number, rows_total: number | null, bytes: number, percent: number }
  finished_at: string | null
  download_url: string | null
}
const view = async (who: ProvisionedTenant, id: string): Promise<ExportView> =>
  (await ctx.app.inject(as(who, { method: 'GET', url: `/v1/exports/${id}` }))).json<ExportView>()

async function download (who: ProvisionedTenant, id: string): Promise<string> {
  const res = await ctx.app.inject(as(who, { method: 'GET', url: `/v1/exports/${id}/download` }))
  if (res.statusCode !== 200) throw new Error(`download failed: ${res.statusCode} ${res.body}`)
  return res.body
}

const SECRET_FIELDS = /,"(?:secret_hash|secret_sealed|previous_secret_sealed)":(?:"[^"]*"|null)/g

/** What the tenant's export must hold: the operator export's lines, less its signature and the secret fields. */
/**
 * An export's own size is counted (usage: export_bytes) once it is ready, after its file was written: the
 * operator export made afterwards holds that count, the file did not. Left out of both sides.
 */
const withoutExportMetering = (file: string): string =>
  file.split('\n').filter((line) => !line.includes('"metric":"export_bytes"')).join('\n')

async function expectedFile (who: ProvisionedTenant): Promise<string> {
  const res = await ctx.app.inject({ method: 'GET', url: `/admin/v1/tenants/${who.id}/export`, headers: operator(ctx) })
  if (res.statusCode !== 200) throw new Error(`operator export failed: ${res.statusCode}`)
  const lines = res.body.trimEnd().split('\n')
  if (!lines.pop()!.startsWith('{"signature":')) throw new Error('no signature trailer')
  return withoutExportMetering(lines.map((line) => `${line.replace(SECRET_FIELDS, '')}\n`).join(''))
}

const chunksOf = async (id: string) => query<{ seq: number, bytes: number }>(ctx.db.adminUrl,
  'SELECT seq, length(data) AS bytes FROM tenant_export_chunks WHERE export_id = $1 ORDER BY seq', [id])

t.test('the tenant\'s export holds what the operator export holds for the tenant, less its secrets', async (t) => {
  const id = await requestExport(tenant)
  t.equal((await view(tenant, id)).status, 'queued')
  await runTenantExport(job(tenant, id), context)
  const file = await download(tenant, id)
  const expected = await expectedFile(tenant)
  t.equal(withoutExportMetering(file), expected, 'the same lines, byte for byte, but for the secret fields')

  const lines = file.trimEnd().split('\n').map((l) => JSON.parse(l) as { table: string, row: Record<string, unknown> })
  const tables = new Set(lines.map((l) => l.table))
  for (const table of ['tenants', 'customers', 'invoices', 'invoice_lines', 'api_keys', 'memberships', 'events',
    'audit_events', 'audit_heads', 'idempotency_keys', 'webhook_endpoints', 'webhook_deliveries', 'webhook_attempts']) {
    t.ok(tables.has(table), `${table} is in it`)
  }
  t.notOk(tables.has('tenant_exports') || tables.has('tenant_export_chunks'), 'not the exports themselves')
  t.ok(lines.some((l) => l.table === 'events' && l.row.type === 'export.requested'), 'its own request is an event')
  for (const l of lines) {
    t.equal(l.table === 'tenants' ? l.row.id : l.row.tenant_id, tenant.id, `${l.table}: the tenant's row`)
  }
  t.notOk(file.includes(other.id), 'nothing of the other tenant')
  for (const secret of [tenant.key, ...secrets.sealed, 'secret_hash', 'secret_sealed']) {
    t.notOk(file.includes(secret), 'no secret, hashed or sealed')
  }
  const endpoint = lines.find((l) => l.table === 'webhook_endpoints')!.row
  t.match(endpoint, { url: 'https://hooks.example/rowfence', event_types: ['*'] }, 'the endpoint, less its secrets')

  const done = await view(tenant, id)
  t.match(done, { status: 'ready', download_url: `/v1/exports/${id}/download` })
  t.equal(done.progress.rows_done, lines.length)
  t.equal(done.progress.rows_total, lines.length)
  t.equal(done.progress.bytes, Buffer.byteLength(file))
  t.equal(done.progress.percent, 100)
})

t.test('the progress moves chunk by chunk, and the chunks add up to the file', async (t) => {
  const id = await requestExport(tenant)
  const seen: ExportView[] = []
  const handler = tenantExportJob({
    ...small,
    afterChunk: async () => { seen.push(await view(tenant, id)) },
  })
  await handler(job(tenant, id), context)
  t.ok(seen.length >= 8, `${seen.length} chunks seen`)
  for (const [i, v] of seen.entries()) {
    t.equal(v.status, 'running')
    t.ok(v.progress.rows_total! > 0, 'the rows were counted first')
    t.ok(v.progress.percent < 100, 'not 100 before it is ready')
    if (i > 0) {
      t.ok(v.progress.rows_done > seen[i - 1]!.progress.rows_done, 'rows_done grows')
      t.ok(v.progress.bytes > seen[i - 1]!.progress.bytes, 'bytes grow')
      t.ok(v.progress.percent >= seen[i - 1]!.progress.percent, 'percent does not go back')
    }
  }
  const file = await download(tenant, id)
  t.equal(withoutExportMetering(file), await expectedFile(tenant), 'the same file as in one big chunk')
  const chunks = await chunksOf(id)
  t.same(chunks.map((c) => c.seq), chunks.map((_, i) => i), 'chunks numbered from 0 without a gap')
  t.equal(chunks.reduce((sum, c) => sum + c.bytes, 0), Buffer.byteLength(file))
  t.equal(chunks.length, seen.length)
})

t.test('a rerun after a crash starts over and produces the same file; a finished export is left alone',
  async (t) => {
    const id = await requestExport(tenant)
    const crash = tenantExportJob({
      ...small,
      afterChunk: async ({ seq }) => { if (seq === 3) throw new Error('worker died') },
    })
    await t.rejects(crash(job(tenant, id), context), { message: 'worker died' })
    t.match(await view(tenant, id), { status: 'running', download_url: null })
    t.equal((await chunksOf(id)).length, 3, 'a partial file was left')
    const download409 = await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/exports/${id}/download` }))
    t.equal(download409.statusCode, 409, 'not downloadable while running')

    await tenantExportJob(small)(job(tenant, id, 2), context)
    const file = await download(tenant, id)
    t.equal(withoutExportMetering(file), await expectedFile(tenant), 'the whole file, once')
    const chunks = await chunksOf(id)
    t.equal(chunks.reduce((sum, c) => sum + c.bytes, 0), Buffer.byteLength(file), 'no chunk of the first run left')

    const before = await view(tenant, id)
    await runTenantExport(job(tenant, id, 3), context)
    t.same(await view(tenant, id), before, 'a ready export is not made again')
    t.equal(await download(tenant, id), file)
  })

t.test('a job naming another tenant, or no export, finds nothing and writes nothing', async (t) => {
  const id = await requestExport(tenant)
  const state = async () => query(ctx.db.adminUrl, `
    SELECT e.tenant_id, e.id, e.status, e.started_at, e.rows_total, e.rows_done, e.bytes,
           (SELECT count(*) FROM tenant_export_chunks c WHERE c.export_id = e.id)::int AS chunks
      FROM tenant_exports e ORDER BY e.tenant_id, e.id`)
  const before = await state()
  await runTenantExport(job(other, id), context)
  await runTenantExport(job(tenant, newId()), context)
  await runTenantExport(job({ id: '0190a6d2-0000-7000-8000-000000000000' }, id), context)
  t.same(await state(), before, 'no export of either tenant was touched')
  t.same(await query(ctx.db.adminUrl, 'SELECT id FROM tenant_exports WHERE tenant_id = $1', [other.id]), [],
    'and the other tenant has none')
  t.match(await view(tenant, id), { status: 'queued' })
  await runTenantExport(job(tenant, id), context)
  t.match(await view(tenant, id), { status: 'ready' }, 'run for its own tenant, it is made')
})

t.test('an export deleted while its job runs stops the job without a trace', async (t) => {
  const id = await requestExport(tenant)
  const handler = tenantExportJob({
    ...small,
    afterChunk: async ({ seq }) => {
      if (seq === 2) await query(ctx.db.adminUrl, 'DELETE FROM tenant_exports WHERE id = $1', [id])
    },
  })
  await handler(job(tenant, id), context)
  t.same(await chunksOf(id), [], 'no chunk written after it was deleted')
  t.equal((await ctx.app.inject(as(tenant, { method: 'GET', url: `/v1/exports/${id}` }))).statusCode, 404)
})

t.test('the last attempt to fail records the export as failed and frees the way for a new one', async (t) => {
  const id = await requestExport(tenant)
  const failing = tenantExportJob({
    ...small,
    afterChunk: async ({ seq }) => { if (seq === 2) throw new Error('database gone') },
  })
  await t.rejects(failing(job(tenant, id, 9), context))
  t.match(await view(tenant, id), { status: 'running' }, 'an attempt that is not the last leaves it to a retry')
  await t.rejects(failing(job(tenant, id, 10), context))
  t.match(await view(tenant, id), { status: 'failed', error: /request a new one/, download_url: null })
  t.same(await chunksOf(id), [], 'its partial file is gone')
  const again = await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/exports' }))
  t.equal(again.statusCode, 202, 'a failed export does not block a new one')
  await runTenantExport(job(tenant, again.json<{ id: string }>().id), context)
})
