// npm run migrate: apply the SQL migrations in sql/ as the owner role (DATABASE_URL).
// Without DATABASE_URL it migrates the embedded development database under DATA_DIR.
import { ConfigError, loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { MigrationError, migrate } from '../src/ops/migrate.ts'
import { databaseTls, tlsFailure } from '../src/db/tls.ts'

async function main (): Promise<void> {
  const config = loadConfig()
  const tls = databaseTls(config)
  const embedded = config.DATABASE_URL === undefined
    ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
    : undefined
  try {
    const result = await migrate(embedded?.ownerUrl ?? config.DATABASE_URL!, { log: (line) => console.log(line), tls })
      .catch((error: unknown) => { throw tlsFailure(error, tls) ?? error })
    console.log(result.applied.length === 0
      ? `database is up to date (${result.alreadyApplied} migrations applied earlier)`
      : `applied ${result.applied.length} migration(s)`)
  } finally {
    await embedded?.stop()
  }
}

main().catch((error: unknown) => {
  const known = error instanceof MigrationError || error instanceof ConfigError
  console.error(`migrate: ${known ? (error as Error).message : String(error instanceof Error ? error.stack : error)}`)
  process.exit(1)
})
