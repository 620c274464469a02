// npm run check: the start-up safety checks, on their own. Exits 1 when the runtime role could
// bypass row-level security or a tenant table is not protected. Without APP_DATABASE_URL it checks
// the embedded development database.
import pg from 'pg'
import { ConfigError, loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/db/embedded.ts'
import { runSafetyChecks } from '../src/db/safety-checks.ts'

async function main (): Promise<number> {
  const config = loadConfig()
  const embedded = config.APP_DATABASE_URL === undefined
    ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
    : undefined
  const client = new pg.Client({ connectionString: embedded?.appUrl ?? config.APP_DATABASE_URL, application_name: 'rowfence-check' })
  try {
    await client.connect()
    const report = await runSafetyChecks(client)
    if (report.ok) {
      console.log(`ok: runtime role ${report.role} is confined by row-level security on ${report.tenantTables} tenant tables`)
      return 0
    }
    for (const problem of report.problems) console.error(`problem: ${problem}`)
    return 1
  } finally {
    await client.end().catch(() => {})
    await embedded?.stop()
  }
}

main().then((code) => { process.exit(code) }, (error: unknown) => {
  console.error(`check: ${error instanceof ConfigError ? error.message : String(error instanceof Error ? error.message : error)}`)
  process.exit(1)
})
