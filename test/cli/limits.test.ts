import { once } from 'node:events'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { runCli, startServer } from '../helpers/cli.ts'
import { createTestDatabase } from '../helpers/db.ts'

// `rowfence plans|limits|usage` as an operator runs them: child processes next to a real listening server
// (src/server.ts, on a database of this file's own), found through DATA_DIR as `npm start` records itself.

// About 50 CLI runs, each a process that compiles TypeScript.
t.setTimeout(300_000)
const dataDir = await mkdtemp(path.join(tmpdir(), 'rowfence-cli-limits-'))
t.teardown(() => rm(dataDir, { recursive: true, force: true }))
const db = await createTestDatabase(t)
const server = startServer({
  DATABASE_URL: db.ownerUrl,
  APP_DATABASE_URL: db.appUrl,
  DATA_DIR: dataDir,
  NODE_ENV: 'development',
  // Refusals reach the ranking when the usage meter writes: often, so that the test need not wait long.
  USAGE_FLUSH_MS: '200',
})
t.teardown(async () => { await server.stop() })
const url = await server.listening
const cli = async (...args: string[]) => runCli(args, { DATA_DIR: dataDir })

interface Created { tenant: { id: string, slug: string }, api_key: { id: string, key: string } }
const api = async (key: string, pathname: string, body: unknown) => fetch(`${url}${pathname}`, {
  method: 'POST',
  headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
  body: JSON.stringify(body),
})
async function createTenant (slug: string): Promise<Created> {
  const run = await cli('tenants', 'create', '--name', slug, '--slug', slug, '--json')
  if (run.code !== 0) throw new Error(`creating ${slug} failed: ${run.stderr}`)
  return JSON.parse(run.stdout) as Created
}
async function json<T = Record<string, unknown>> (...args: string[]): Promise<T> {
  const run = await cli(...args, '--json')
  if (run.code !== 0) throw new Error(`${args.join(' ')} exited ${run.code}: ${run.stderr}`)
  return JSON.parse(run.stdout) as T
}

/** The one line an error is: on stderr, nothing on stdout, no stack trace. */
const oneErrorLine = (run: { stdout: string, stderr: string }, pattern: RegExp): boolean =>
  run.stdout === '' && pattern.test(run.stderr) && run.stderr.split('\n').length === 2 && !/\n\s+at /.test(run.stderr)

const thisPeriod = new Date().toISOString().slice(0, 7)

t.test('plans set creates and replaces a plan, plans list shows it; bad input is a usage error', async (t) => {
  const created = await cli('plans', 'set', 'gold', '--limit', 'invoices_created=100', '--limit', 'burst=unlimited')
  t.equal(created.code, 0, created.stderr)
  t.equal(created.stdout, 'plan gold (0 tenants on it): burst=unlimited, invoices_created=100; ' +
    'the rest are the server\'s defaults\n')
  const replaced = await json<{ name: string, limits: Record<string, number | null> }>(
    'plans', 'set', 'gold', '--limit', 'customers=5,api_keys=3')
  t.same(replaced.limits, { customers: 5, api_keys: 3 }, 'the limits given replace the whole set')
  const listed = await cli('plans', 'list')
  t.equal(listed.code, 0, listed.stderr)
  t.match(listed.stdout, /^PLAN +TENANTS +UPDATED +LIMITS\n/)
  t.match(listed.stdout, /^gold +0 +\S+ +customers=5, api_keys=3$/m)
  const plans = await json<Array<{ name: string, tenants: number }>>('plans', 'list')
  t.match(plans, [{ name: 'gold', tenants: 0, limits: { customers: 5, api_keys: 3 } }])

  const unknown = await cli('plans', 'set', 'gold', '--limit', 'bogus=1')
  t.equal(unknown.code, 2)
  t.ok(oneErrorLine(unknown, /^rowfence plans set: unknown limit "bogus": the limits are requests_per_second, burst, /),
    unknown.stderr)
  for (const args of [['--limit', 'burst=-1'], ['--limit', 'burst=lots'], ['--limit', 'burst'],
    ['--limit', 'burst=default'], ['--limit', 'burst=1', '--limit', 'burst=2'], ['--limit', 'burst=1e20'], []]) {
    const run = await cli('plans', 'set', 'gold', ...args)
    t.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`)
    t.match(run.stderr, /^rowfence plans set: [^\n]+\n$/)
  }
  const badName = await cli('plans', 'set', 'Gold!', '--limit', 'burst=1')
  t.equal(badName.code, 2, badName.stderr)
  t.same((await json<Array<{ limits: unknown }>>('plans', 'list')).map((p) => p.limits),
    [{ customers: 5, api_keys: 3 }], 'nothing refused reached the server')
  const missing = await cli('plans', 'delete', 'platinum')
  t.equal(missing.code, 3)
  t.ok(oneErrorLine(missing, /^rowfence plans delete: plan not found\n$/), missing.stderr)
})

t.test('limits set changes only what it is asked; limits show prints plan, overrides and limits', async (t) => {
  const tenant = await createTenant('limited')
  await json('plans', 'set', 'silver', '--limit', 'invoices_created=50,customers=10')
  type Limits = { tenant_id: string, plan: string | null, overrides: object, effective: Record<string, unknown> }
  const onPlan = await json<Limits>('limits', 'set', 'limited', '--plan', 'silver')
  t.match(onPlan, { tenant_id: tenant.tenant.id, plan: 'silver', overrides: {} })
  t.match(onPlan.effective, { invoices_created: 50, customers: 10 })

  const added = await json<Limits>('limits', 'set', 'limited', '--override', 'customers=20')
  t.equal(added.plan, 'silver', 'the plan stays when --plan is not given')
  t.same(added.overrides, { customers: 20 })
  t.match(added.effective, { invoices_created: 50, customers: 20 })
  const more = await json<Limits>('limits', 'set', tenant.tenant.id, '--override', 'burst=unlimited')
  t.same(more.overrides, { customers: 20, burst: null }, 'the other overrides stay')
  const removed = await json<Limits>('limits', 'set', 'limited', '--override', 'customers=default')
  t.same(removed.overrides, { burst: null }, 'NAME=default removes one override')
  t.match(removed, { plan: 'silver', effective: { customers: 10, burst: null } })

  const shown = await cli('limits', 'show', 'limited')
  t.equal(shown.code, 0, shown.stderr)
  t.match(shown.stdout, new RegExp(`^tenant: +${tenant.tenant.id}\nplan: +silver\noverrides: +burst=unlimited\n`))
  t.match(shown.stdout, /^LIMIT +IN FORCE +FROM$/m)
  t.match(shown.stdout, /^customers +10 +plan silver$/m)
  t.match(shown.stdout, /^invoices_created +50 +plan silver$/m)
  t.match(shown.stdout, /^burst +unlimited +override$/m)
  t.match(shown.stdout, /^requests_per_second +\S+ +default$/m)
  t.same(await json('limits', 'show', tenant.tenant.id), await json('limits', 'show', 'limited'), 'by id or slug')

  const cleared = await json<Limits>('limits', 'set', 'limited', '--no-plan', '--clear-overrides')
  t.match(cleared, { plan: null, overrides: {} })
  t.same(cleared.overrides, {})
  const fresh = await json<Limits>('limits', 'set', 'limited', '--clear-overrides', '--override', 'members=2',
    '--plan', 'silver')
  t.match(fresh, { plan: 'silver', overrides: { members: 2 } }, '--clear-overrides, then the new ones')

  const noPlan = await cli('limits', 'set', 'limited', '--plan', 'nosuch')
  t.equal(noPlan.code, 3)
  t.ok(oneErrorLine(noPlan, /^rowfence limits set: no plan named nosuch \(rowfence plans list shows them\)\n$/),
    noPlan.stderr)
  t.equal((await cli('limits', 'set', 'nobody', '--plan', 'silver')).code, 3, 'an unknown tenant')
  for (const args of [[], ['--plan', 'silver', '--no-plan'], ['--override', 'bogus=1'], ['--override', 'burst=x'],
    ['--plan', 'Not A Plan']]) {
    const run = await cli('limits', 'set', 'limited', ...args)
    t.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`)
    t.match(run.stderr, /^rowfence limits set: [^\n]+\n$/)
  }
  t.match(await json('limits', 'show', 'limited'), { plan: 'silver', overrides: { members: 2 } }, 'unchanged')
})

t.test('plans delete refuses a plan tenants are on (exit 4), then deletes it once unused', async (t) => {
  await createTenant('bronzed')
  await json('plans', 'set', 'bronze', '--limit', 'customers=1')
  await json('limits', 'set', 'bronzed', '--plan', 'bronze')
  const refused = await cli('plans', 'delete', 'bronze')
  t.equal(refused.code, 4)
  t.ok(oneErrorLine(refused,
    /^rowfence plans delete: tenants are on this plan: move them to another one first\n$/), refused.stderr)
  const plans = await json<Array<{ name: string, tenants: number }>>('plans', 'list')
  t.equal(plans.find((p) => p.name === 'bronze')?.tenants, 1)
  await json('limits', 'set', 'bronzed', '--no-plan')
  const deleted = await cli('plans', 'delete', 'bronze')
  t.equal(deleted.code, 0, deleted.stderr)
  t.equal(deleted.stdout, 'deleted plan bronze\n')
  t.equal((await cli('plans', 'delete', 'bronze')).code, 3, 'deleting it again: not found')
})

t.test('usage export writes every tenant\'s totals, as NDJSON or CSV, to a file or stdout', async (t) => {
  const billed = await createTenant('billed')
  const customer = await api(billed.api_key.key, '/v1/customers', { name: 'Ada' })
  t.equal(customer.status, 201)
  const customerId = ((await customer.json()) as { id: string }).id
  for (let i = 0; i < 3; i++) {
    const invoice = await api(billed.api_key.key, '/v1/invoices', {
      customer_id: customerId, currency: 'EUR', lines: [{ description: 'work', quantity: 1, unit_amount_cents: 100 }],
    })
    t.equal(invoice.status, 201)
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-usage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const ndjsonFile = path.join(dir, 'usage.ndjson')
  const run = await cli('usage', 'export', '--out', ndjsonFile)
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stdout, '')
  const records = (await readFile(ndjsonFile, 'utf8')).trimEnd().split('\n')
    .map((line) => JSON.parse(line) as { tenant_id: string, period: string, totals: Record<string, number> })
  t.equal(run.stderr, `exported the usage of ${records.length} tenants for the current period as ndjson ` +
    `to ${ndjsonFile}\n`)
  const mine = records.find((r) => r.tenant_id === billed.tenant.id)
  t.match(mine, { slug: 'billed', period: thisPeriod, totals: { invoices_created: 3 } })
  t.ok(records.length >= 2, 'every tenant, those that used nothing included')

  const csvFile = path.join(dir, 'usage.csv')
  const csv = await json<{ tenants: number }>('usage', 'export', '--format', 'csv', '--output', csvFile,
    '--period', thisPeriod)
  t.same(csv, { period: thisPeriod, format: 'csv', file: csvFile, tenants: records.length })
  const [header, ...rows] = (await readFile(csvFile, 'utf8')).trimEnd().split('\n')
  const columns = header!.split(',')
  t.same(columns.slice(0, 5), ['tenant_id', 'slug', 'status', 'period', 'invoices_created'])
  const row = rows.map((r) => r.split(',')).find((cells) => cells[0] === billed.tenant.id)
  t.equal(row?.[columns.indexOf('invoices_created')], '3')
  t.equal(rows.length, records.length)
  t.same((await readdir(dir)).sort(), ['usage.csv', 'usage.ndjson'], 'no temporary file left')

  const stdout = await cli('usage', 'export', '--period', thisPeriod)
  t.equal(stdout.code, 0, stdout.stderr)
  t.same(stdout.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as unknown), records, 'the same on stdout')
  const old = await cli('usage', 'export', '--period', '2000-01')
  const oldRecords = old.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as typeof records[number])
  t.equal(oldRecords.length, records.length, 'a period without usage: every tenant...')
  t.ok(oldRecords.every((r) => r.period === '2000-01' && r.totals.invoices_created === 0), '...at 0')

  for (const args of [['--period', '2025-13'], ['--period', 'May'], ['--format', 'xml'], ['--json'],
    ['--out', 'a', '--output', 'b']]) {
    const bad = await cli('usage', 'export', ...args)
    t.equal(bad.code, 2, `${args.join(' ')}: ${bad.stderr}`)
    t.ok(oneErrorLine(bad, /^rowfence usage export: [^\n]+\n$/), bad.stderr)
  }
})

t.test('a download that breaks off leaves no file and exits 1', async (t) => {
  // A server that starts the body, then drops the connection.
  const broken = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'application/x-ndjson' })
    response.write('{"tenant_id":"a"}\n{"tenant_id":"b"}\n', () => { response.socket?.destroy() })
  })
  broken.listen(0, '127.0.0.1')
  await once(broken, 'listening')
  t.teardown(() => { broken.closeAllConnections(); broken.close() })
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-usage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'usage.ndjson')
  const run = await runCli(['usage', 'export', '--out', file, '--url',
    `http://127.0.0.1:${(broken.address() as AddressInfo).port}`], { DATA_DIR: dataDir, ROWFENCE_ADMIN_TOKEN: 'x' })
  t.equal(run.code, 1)
  t.ok(oneErrorLine(run, /^rowfence usage export: the download from \S+ broke off after 2 tenants \(/), run.stderr)
  t.same(await readdir(dir), [], 'neither the file nor its temporary copy')
})

t.test('a long download counts the tenants on stderr as they arrive', async (t) => {
  // A server that sends a line every 300 ms: the count shows after two seconds.
  const slow = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'application/x-ndjson' })
    let sent = 0
    const timer = setInterval(() => {
      response.write(`{"tenant_id":"${++sent}"}\n`)
      if (sent === 10) { clearInterval(timer); response.end() }
    }, 300)
  })
  slow.listen(0, '127.0.0.1')
  await once(slow, 'listening')
  t.teardown(() => { slow.closeAllConnections(); slow.close() })
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-usage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'usage.ndjson')
  const run = await runCli(['usage', 'export', '--out', file, '--url',
    `http://127.0.0.1:${(slow.address() as AddressInfo).port}`], { DATA_DIR: dataDir, ROWFENCE_ADMIN_TOKEN: 'x' })
  t.equal(run.code, 0, run.stderr)
  t.match(run.stderr, /^usage export [1-9] tenants\n/, 'a count while it runs')
  t.match(run.stderr, /^usage export 10 tenants\n+exported the usage of 10 tenants for the current period/m,
    'the last count, then the summary')
  t.equal((await readFile(file, 'utf8')).split('\n').length, 11)
})

t.test('usage refusals ranks the tenants refused most', async (t) => {
  const noisy = await createTenant('noisy')
  await json('limits', 'set', 'noisy', '--override', 'customers=1')
  t.equal((await api(noisy.api_key.key, '/v1/customers', { name: 'one' })).status, 201)
  t.equal((await api(noisy.api_key.key, '/v1/customers', { name: 'two' })).status, 403, 'refused by the quota')
  type Ranking = { period: string, data: Array<{ tenant_id: string, refusals: number, quota: number }> }
  let ranking: Ranking | undefined
  // The meter writes refusals every 200 ms here.
  for (let i = 0; i < 50; i++) {
    ranking = await json<Ranking>('usage', 'refusals', '--period', thisPeriod, '--limit', '5')
    if (ranking.data.some((r) => r.tenant_id === noisy.tenant.id)) break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.equal(ranking?.period, thisPeriod)
  t.match(ranking?.data.find((r) => r.tenant_id === noisy.tenant.id), { refusals: 1, quota: 1 })
  const human = await cli('usage', 'refusals')
  t.equal(human.code, 0, human.stderr)
  t.match(human.stdout, /^TENANT +SLUG +REFUSALS +RATE +CONCURRENCY +QUOTA\n/)
  t.match(human.stdout, new RegExp(`^${noisy.tenant.id} +noisy +1 +0 +0 +1$`, 'm'))
  const none = await cli('usage', 'refusals', '--period', '2000-01')
  t.equal(none.stdout, 'no tenant was refused in 2000-01\n')
  for (const args of [['--limit', '0'], ['--limit', '1001'], ['--limit', 'ten'], ['--period', '2025-1']]) {
    const bad = await cli('usage', 'refusals', ...args)
    t.equal(bad.code, 2, `${args.join(' ')}: ${bad.stderr}`)
  }
})
