// npm run check: the start-up safety checks, on their own. Exits 1 when the runtime role could
// bypass row-level security, a tenant table is not protected, or a sharded table lacks a partition
// for a live shard. Without APP_DATABASE_URL it checks the embedded development database.
import pg from 'pg'
import { ConfigError, loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { runSafetyChecks } from '../src/ops/safety-checks.ts'
import { checkShardPartitions } from '../src/ops/shard-checks.ts'
import { connectionOptions, databaseTls, tlsFailure } from '../src/db/tls.ts'

async function main (): Promise<number> {
  const config = loadConfig()
  const tls = databaseTls(config)
  const embedded = config.APP_DATABASE_URL === undefined
    ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
    : undefined
  const client = new pg.Client({
    ...connectionOptions(embedded?.appUrl ?? config.APP_DATABASE_URL!, tls), application_name: 'rowfence-check',
  })
  // The shard check runs as the owner: only the owner's registry policy shows every tenant's shard.
  const owner = new pg.Client({
    ...connectionOptions(embedded?.ownerUrl ?? config.DATABASE_URL!, tls), application_name: 'rowfence-check',
  })
  try {
    await Promise.all([client.connect(), owner.connect()])
      .catch((error: unknown) => { throw tlsFailure(error, tls) ?? error })
    const report = await runSafetyChecks(client)
    const problems = [...report.problems, ...await checkShardPartitions(owner)]
    if (problems.length === 0) {
      console.log(`ok: runtime role ${report.role} is confined by row-level security on ${report.tenantTables} tenant tables`)
      console.log('ok: every sharded table has a partition for every live shard')
      return 0
    }
    for (const problem of problems) console.error(`problem: ${problem}`)
    return 1
  } finally {
    await client.end().catch(() => {})
    await owner.end().catch(() => {})
    await embedded?.stop()
  }
}

main().then((code) => { process.exit(code) }, (error: unknown) => {
  console.error(`check: ${error instanceof ConfigError ? error.message : String(error instanceof Error ? error.message : error)}`)
  process.exit(1)
})
