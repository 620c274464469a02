import { randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import pg from 'pg'
import t from 'tap'
import { withTenantTransaction } from '../../src/db/tenant-transaction.ts'
import { newId } from '../../src/ids.ts'
import { runTenantExport } from '../../src/jobs/tenant-export-job.ts'
import type { JobContext } from '../../src/jobs/types.ts'
import { allocateShard } from '../../src/tenancy/shards.ts'
import { importTenant } from '../../src/tenancy/tenant-import.ts'
import { openSecret, sealSecret } from '../../src/webhooks/secret-box.ts'
import { as, buildTestApp, provisionTenant, TEST_EXPORT_SIGNING_KEY, type ProvisionedTenant } from '../helpers/app.ts'
import { createTestDatabase, query } from '../helpers/db.ts'
import { operator } from '../helpers/operator.ts'
import { applyQuotaDefaults } from '../../src/limits/limits.ts'

const TTL_MS = 120_000
// Key usage is written back to api_keys only at close, so that exports compared byte for byte stay still.
const ctx = await buildTestApp(t, { TENANT_EXPORT_TTL_MS: TTL_MS, KEY_USAGE_FLUSH_MS: 3_600_000 })
const appPool = new pg.Pool({ connectionString: ctx.db.appUrl, max: 2 })
t.teardown(() => appPool.end())
const context: JobContext = {
  pool: appPool, log: ctx.app.log, signal: new AbortController().signal, quotaDefaults: '{}',
}

interface Export {
  id: string
  status: string
  progress: { rows_done: number, rows_total: number | null, bytes: number, percent: number }
  error: string | null
  requested_by: { type: string, id: string }
  created_at: string
  started_at: string | null
  finished_at: string | null
  expires_at: string | null
  download_url: string | null
}

const request = (who: ProvisionedTenant) => ctx.app.inject(as(who, { method: 'POST', url: '/v1/exports' }))
const get = (who: { key: string }, url: string) => ctx.app.inject(as(who, { method: 'GET', url }))
const runJob = (who: ProvisionedTenant, id: string) =>
  runTenantExport({ tenantId: who.id, ref: id, jobId: '1', attempt: 1, maxAttempts: 10 }, context)

async function requested (who: ProvisionedTenant): Promise<Export> {
  const res = await request(who)
  if (res.statusCode !== 202) throw new Error(`export request failed: ${res.statusCode} ${res.body}`)
  return res.json<Export>()
}

async function ready (who: ProvisionedTenant): Promise<Export> {
  const created = await requested(who)
  await runJob(who, created.id)
  return (await get(who, `/v1/exports/${created.id}`)).json<Export>()
}

const sweep = async () =>
  (await ctx.app.inject({ method: 'POST', url: '/admin/v1/maintenance/sweep', headers: operator(ctx) }))
    .json<{ exports_deleted: number }>()
const expire = (id: string) =>
  query(ctx.db.adminUrl, "UPDATE tenant_exports SET expires_at = now() - interval '1 second' WHERE id = $1", [id])

t.test('an admin requests an export: 202 with its location, queued, enqueued and audited', async (t) => {
  const tenant = await provisionTenant(ctx)
  const res = await request(tenant)
  t.equal(res.statusCode, 202)
  const created = res.json<Export>()
  t.equal(res.headers.location, `/v1/exports/${created.id}`)
  t.match(created, {
    status: 'queued',
    progress: { rows_done: 0, rows_total: null, bytes: 0, percent: 0 },
    error: null,
    requested_by: { type: 'api_key', id: tenant.keyId },
    started_at: null,
    finished_at: null,
    download_url: null,
  })
  t.equal(Date.parse(created.expires_at!) - Date.parse(created.created_at), TTL_MS,
    'given up if it has not finished within the retention period')
  t.same(await query(ctx.db.adminUrl, `
    SELECT j.payload, j.max_attempts, j.flags FROM graphile_worker._private_jobs j
      JOIN graphile_worker._private_tasks k ON k.id = j.task_id
     WHERE k.identifier = 'tenant_export' AND j.payload->>'ref' = $1`, [created.id]),
  [{ payload: { tenant_id: tenant.id, ref: created.id }, max_attempts: 10, flags: { [`exports:${tenant.id}`]: true } }],
  'its job is queued, flagged with the tenant\'s exports, naming only tenant and export')

  const audited = (await get(tenant, '/v1/audit-events?limit=1')).json<{ data: Array<Record<string, unknown>> }>()
  t.match(audited.data[0], { action: 'export.requested', resource: { type: 'export', id: created.id } })
  const events = (await get(tenant, '/v1/events?type=export.requested')).json<{ data: Array<{ data: unknown }> }>()
  t.same(events.data.map((e) => e.data), [created], 'and an event with the export as it was answered')

  t.same((await get(tenant, `/v1/exports/${created.id}`)).json(), created)
  t.same((await get(tenant, '/v1/exports')).json(), { data: [created], next_cursor: null })

  await runJob(tenant, created.id)
  const done = (await get(tenant, `/v1/exports/${created.id}`)).json<Export>()
  t.match(done, { status: 'ready', download_url: `/v1/exports/${created.id}/download`, progress: { percent: 100 } })
  t.equal(Date.parse(done.expires_at!) - Date.parse(done.finished_at!), TTL_MS,
    'ready: downloadable for the retention period from when it finished')
  t.ok(Date.parse(done.started_at!) <= Date.parse(done.finished_at!))
})

t.test('the download streams the file as NDJSON, and only once it is ready', async (t) => {
  const tenant = await provisionTenant(ctx)
  const created = await requested(tenant)
  const early = await get(tenant, `/v1/exports/${created.id}/download`)
  t.equal(early.statusCode, 409)
  t.match(early.json(), { type: /\/export-not-ready$/, detail: /queued/ })
  await runJob(tenant, created.id)
  const res = await get(tenant, `/v1/exports/${created.id}/download`)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/x-ndjson/)
  t.equal(res.headers['content-disposition'], `attachment; filename="export-${created.id}.ndjson"`)
  const done = (await get(tenant, `/v1/exports/${created.id}`)).json<Export>()
  t.equal(Number(res.headers['content-length']), done.progress.bytes)
  t.equal(res.rawPayload.length, done.progress.bytes)
  const lines = res.body.trimEnd().split('\n').map((l) => JSON.parse(l) as { table: string })
  t.equal(lines.length, done.progress.rows_done)
  t.equal(lines[0]!.table, 'tenants', 'the tenant first, as in the operator export')
})

t.test('one export at a time: another request while one is unfinished is a 409', async (t) => {
  const tenant = await provisionTenant(ctx)
  const [a, b] = await Promise.all([request(tenant), request(tenant)])
  t.same([a.statusCode, b.statusCode].sort(), [202, 409], 'of two at once, one is queued')
  const first = [a, b].find((r) => r.statusCode === 202)!.json<Export>()
  const refused = [a, b].find((r) => r.statusCode === 409)!
  t.match(refused.json(), { status: 409, type: /\/export-in-progress$/, detail: new RegExp(first.id) })
  t.equal((await get(tenant, '/v1/exports')).json<{ data: unknown[] }>().data.length, 1, 'nothing was written')
  t.equal((await request(tenant)).statusCode, 409, 'still queued')
  await runJob(tenant, first.id)
  t.equal((await request(tenant)).statusCode, 202, 'once it is ready, another one')
})

t.test('exports need the admin scope', async (t) => {
  const tenant = await provisionTenant(ctx)
  const done = await ready(tenant)
  const created = await ctx.app.inject(as(tenant, {
    method: 'POST', url: '/v1/api-keys', payload: { name: 'no-admin', scopes: ['read', 'write'] },
  }))
  const key = { key: created.json<{ key: string }>().key }
  t.equal((await ctx.app.inject(as(key, { method: 'POST', url: '/v1/exports' }))).statusCode, 403)
  for (const url of ['/v1/exports', `/v1/exports/${done.id}`, `/v1/exports/${done.id}/download`]) {
    t.equal((await get(key, url)).statusCode, 403, `GET ${url}`)
  }
})

t.test('another tenant gets 404 for an export, and does not list it', async (t) => {
  const tenant = await provisionTenant(ctx)
  const intruder = await provisionTenant(ctx)
  const done = await ready(tenant)
  t.equal((await get(intruder, `/v1/exports/${done.id}`)).statusCode, 404)
  t.equal((await get(intruder, `/v1/exports/${done.id}/download`)).statusCode, 404)
  t.same((await get(intruder, '/v1/exports')).json(), { data: [], next_cursor: null })
  t.equal((await get(tenant, `/v1/exports/${done.id}/download`)).statusCode, 200, 'its own tenant downloads it')
})

t.test('an expired export is a 410, shows as expired, and the sweep deletes it with its file', async (t) => {
  const tenant = await provisionTenant(ctx)
  const done = await ready(tenant)
  await expire(done.id)
  const shown = (await get(tenant, `/v1/exports/${done.id}`)).json<Export>()
  t.match(shown, { status: 'expired', download_url: null, progress: { percent: 100 } })
  const gone = await get(tenant, `/v1/exports/${done.id}/download`)
  t.equal(gone.statusCode, 410)
  t.match(gone.json(), { status: 410, type: /\/export-expired$/ })
  const chunks = (): Promise<unknown[]> =>
    query(ctx.db.adminUrl, 'SELECT 1 FROM tenant_export_chunks WHERE export_id = $1', [done.id])
  t.ok((await chunks()).length > 0)
  const kept = await ready(tenant)
  t.match(await sweep(), { exports_deleted: 1 })
  t.equal((await get(tenant, `/v1/exports/${done.id}`)).statusCode, 404, 'deleted')
  t.same(await chunks(), [], 'with its file')
  t.equal((await get(tenant, `/v1/exports/${kept.id}/download`)).statusCode, 200, 'an export still valid stays')
})

t.test('an export that never finished is given up at its deadline: it no longer blocks a new one', async (t) => {
  const tenant = await provisionTenant(ctx)
  const stuck = await requested(tenant)
  t.equal((await request(tenant)).statusCode, 409)
  await expire(stuck.id)
  const next = await requested(tenant)
  t.not(next.id, stuck.id)
  t.match(await sweep(), { exports_deleted: 1 })
  t.equal((await get(tenant, `/v1/exports/${stuck.id}`)).statusCode, 404, 'the sweep deleted it')
})

t.test('the list pages newest first', async (t) => {
  const tenant = await provisionTenant(ctx)
  const first = await ready(tenant)
  const second = await ready(tenant)
  const page1 = (await get(tenant, '/v1/exports?limit=1')).json<{ data: Export[], next_cursor: string }>()
  t.same(page1.data.map((e) => e.id), [second.id])
  const page2 = (await get(tenant, `/v1/exports?limit=1&cursor=${page1.next_cursor}`)).json<{ data: Export[] }>()
  t.same(page2.data.map((e) => e.id), [first.id])
})

t.test('the operator export carries webhook endpoints (sealed) and events, not the tenant\'s exports, and imports ' +
  'into another deployment', async (t) => {
  const webhookKey = randomBytes(32)
  const tenant = await provisionTenant(ctx)
  const endpointId = newId()
  const secret = `whsec_${randomBytes(8).toString('hex')}`
  await withTenantTransaction(appPool, tenant.id, async ({ db }) => {
    await applyQuotaDefaults(db, '{}') // as a request's binding sets them (sql/0021)
    await db.insertInto('webhook_endpoints').values({
      id: endpointId,
      url: 'https://hooks.example/in',
      event_types: ['customer.*'],
      secret_sealed: sealSecret(webhookKey, secret, `${tenant.id}:${endpointId}`),
    }).execute()
  })
  await ctx.app.inject(as(tenant, { method: 'POST', url: '/v1/customers', payload: { name: 'Ada' } }))
  await ready(tenant) // rows in tenant_exports and tenant_export_chunks

  const exportOf = async (app: typeof ctx, id: string): Promise<string> => {
    const res = await app.app.inject({ method: 'GET', url: `/admin/v1/tenants/${id}/export`, headers: operator(app) })
    if (res.statusCode !== 200) throw new Error(`export failed: ${res.statusCode} ${res.body}`)
    return res.body
  }
  const exported = await exportOf(ctx, tenant.id)
  const lines = exported.trimEnd().split('\n').slice(0, -1)
    .map((l) => JSON.parse(l) as { table: string, row: Record<string, unknown> })
  const tables = new Set(lines.map((l) => l.table))
  t.notOk(tables.has('tenant_exports') || tables.has('tenant_export_chunks'), 'no export of the tenant\'s own')
  t.ok(lines.some((l) => l.table === 'events' && l.row.type === 'customer.created'), 'the events')
  t.ok(lines.some((l) => l.table === 'webhook_deliveries' && l.row.endpoint_id === endpointId), 'the deliveries')
  const endpoint = lines.find((l) => l.table === 'webhook_endpoints')?.row
  t.match(endpoint, { id: endpointId, url: 'https://hooks.example/in', secret_sealed: /^v1\./ },
    'the endpoint, its secret sealed')
  t.notOk(exported.includes(secret), 'never the secret in clear')

  const targetDb = await createTestDatabase(t)
  const target = await buildTestApp(t, { KEY_USAGE_FLUSH_MS: 3_600_000 }, targetDb)
  const ownerPool = new pg.Pool({ connectionString: targetDb.ownerUrl, max: 1 })
  try {
    await importTenant(ownerPool, () => Readable.from([exported]), async (client, tenantId) =>
      ({ shard: await allocateShard(client, tenantId, 'pooled'), placement: 'pooled' }),
    { signingKey: TEST_EXPORT_SIGNING_KEY })
  } finally {
    await ownerPool.end()
  }
  t.equal(await exportOf(target, tenant.id), exported, 'export → import → export is identical')
  const [imported] = await query<{ secret_sealed: string }>(targetDb.adminUrl,
    'SELECT secret_sealed FROM webhook_endpoints WHERE id = $1', [endpointId])
  t.equal(openSecret(webhookKey, imported!.secret_sealed, `${tenant.id}:${endpointId}`), secret,
    'the secret opens there with the same WEBHOOK_SECRET_KEY')
  t.throws(() => openSecret(randomBytes(32), imported!.secret_sealed, `${tenant.id}:${endpointId}`),
    'and with no other key')
  t.same(await query(targetDb.adminUrl, 'SELECT 1 FROM tenant_exports'), [], 'no export came along')
})
