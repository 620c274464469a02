import pg from 'pg'
import type { ProvisionedTenant, TestApp } from './app.ts'
import { query } from './db.ts'

/** The operator's authorization header of a test app. */
export const operator = (c: TestApp) => ({ authorization: `Bearer ${c.adminToken}` })

/** Onboards a tenant through the operator API, pooled or dedicated. */
export async function onboard (
  c: TestApp,
  slug: string,
  placement: 'pooled' | 'dedicated' = 'pooled'
): Promise<ProvisionedTenant & { placement: string }> {
  const res = await c.app.inject({
    method: 'POST',
    url: '/admin/v1/tenants',
    headers: operator(c),
    payload: { name: slug, slug, placement },
  })
  if (res.statusCode !== 201) throw new Error(`onboarding failed: ${res.statusCode} ${res.body}`)
  const body = res.json<{
    tenant: { id: string, slug: string, placement: string },
    api_key: { id: string, key: string },
  }>()
  return {
    id: body.tenant.id,
    slug: body.tenant.slug,
    key: body.api_key.key,
    keyId: body.api_key.id,
    placement: body.tenant.placement,
  }
}

/** The shard a tenant lives in (as the superuser: every tenant is visible). */
export async function shardOf (c: TestApp, tenantId: string): Promise<number> {
  const [row] = await query<{ shard: number }>(c.db.adminUrl, 'SELECT shard FROM tenants WHERE id = $1', [tenantId])
  if (row === undefined) throw new Error(`no tenant ${tenantId}`)
  return row.shard
}

/** Tables named like a partition of shard `shard` (attached or not). */
export async function partitionsOf (c: TestApp, shard: number): Promise<string[]> {
  const rows = await query<{ relname: string }>(c.db.adminUrl,
    "SELECT relname FROM pg_class WHERE relname ~ ('_s' || $1 || '$') AND relkind = 'r' ORDER BY 1", [shard])
  return rows.map((r) => r.relname)
}

export interface HeldTransaction {
  client: pg.Client
  /** ROLLBACK and disconnect (idempotent). */
  release: () => Promise<void>
}

/**
 * An open transaction on a connection of its own that has run `statements` (e.g. taken row locks,
 * or read a table so that a later DETACH ... CONCURRENTLY waits for it), until released.
 */
export async function holdTransaction (
  url: string,
  statements: Array<string | [string, unknown[]]>
): Promise<HeldTransaction> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  await client.query('BEGIN')
  for (const s of statements) {
    if (typeof s === 'string') await client.query(s)
    else await client.query(s[0], s[1])
  }
  let released = false
  return {
    client,
    release: async () => {
      if (released) return
      released = true
      await client.query('ROLLBACK').catch(() => {})
      await client.end()
    },
  }
}

/** Polls until `check` is true; throws after `timeoutMs`. */
export async function waitUntil (what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** True while some backend is waiting for a lock with a statement matching `pattern`. */
export async function someoneWaits (c: TestApp, pattern: RegExp): Promise<boolean> {
  const rows = await query<{ query: string }>(c.db.adminUrl,
    "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
  return rows.some((r) => pattern.test(r.query))
}

/** Resolves to the elapsed milliseconds of `work`, or to `Infinity` when it takes longer than `limitMs`. */
export async function timed<T> (work: Promise<T>, limitMs: number): Promise<{ ms: number, result: T | undefined }> {
  const started = performance.now()
  let timer: NodeJS.Timeout | undefined
  const limit = new Promise<'late'>((resolve) => { timer = setTimeout(() => { resolve('late') }, limitMs) })
  const outcome = await Promise.race([work.then((result) => ({ result })), limit])
  clearTimeout(timer)
  if (outcome === 'late') return { ms: Infinity, result: undefined }
  return { ms: performance.now() - started, result: outcome.result }
}
