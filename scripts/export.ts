// npm run export -- --tenant ID [--out FILE]
// Streams every row of the tenant as NDJSON (to FILE, or stdout) from one consistent snapshot, with a
// progress bar on stderr, signed with EXPORT_SIGNING_KEY (generated into DATA_DIR outside production).
// Connects as the owner (DATABASE_URL), or to the embedded database.
import { createWriteStream } from 'node:fs'
import { once } from 'node:events'
import { parseArgs } from 'node:util'
import cliProgress from 'cli-progress'
import pg from 'pg'
import { loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { MISSING_KEY, resolveExportSigningKey } from '../src/tenancy/export-signature.ts'
import { exportTenant } from '../src/tenancy/tenant-data.ts'
import { connectionOptions, databaseTls, tlsFailure, type DatabaseTls } from '../src/db/tls.ts'

let tls: DatabaseTls | undefined

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { tenant: { type: 'string' }, out: { type: 'string' } } })
  if (values.tenant === undefined || !/^[0-9a-f-]{36}$/i.test(values.tenant)) throw new Error('--tenant <uuid> is required')
  const config = loadConfig()
  const key = await resolveExportSigningKey(config)
  if (key === undefined) throw new Error(MISSING_KEY)
  tls = databaseTls(config)
  const embedded = config.DATABASE_URL === undefined ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT }) : undefined
  const pool = new pg.Pool({
    ...connectionOptions(embedded?.ownerUrl ?? config.DATABASE_URL!, tls), max: 1, application_name: 'rowfence-export',
  })
  const out = values.out === undefined ? process.stdout : createWriteStream(values.out)
  // On stderr, so stdout carries nothing but the NDJSON; outside a terminal (a log, CI) as a line every few seconds.
  const bar = new cliProgress.SingleBar({
    format: 'export {bar} {percentage}% | {value}/{total} rows | {eta_buffer}s left', stream: process.stderr, etaBuffer: 1000, noTTYOutput: true, notTTYSchedule: 2000,
  }, cliProgress.Presets.shades_classic)
  let done = 0
  try {
    for await (const line of exportTenant(pool, values.tenant, key, (plan) => { bar.start(plan.total, 0) })) {
      if (!out.write(line)) await once(out, 'drain')
      if (++done % 1000 === 0) bar.update(done)
    }
    done-- // the last line is the signature trailer, not a row
    bar.update(done)
    bar.stop()
    if (out !== process.stdout) { out.end(); await once(out, 'finish') }
    const peakMb = (process.resourceUsage().maxRSS / 1024).toFixed(1)
    process.stderr.write(`exported ${done} rows of tenant ${values.tenant} (peak RSS ${peakMb} MB)\n`)
  } finally {
    bar.stop()
    await pool.end()
    await embedded?.stop()
  }
}

main().catch((failed: unknown) => {
  const error = tls === undefined ? failed : tlsFailure(failed, tls) ?? failed
  process.stderr.write(`export: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exit(1)
})
