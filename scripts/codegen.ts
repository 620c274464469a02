// npm run db:codegen: regenerate src/db/schema.ts (the Kysely types) from a migrated database, as
// the owner (DATABASE_URL) or from the embedded development database. Pass --verify to only check
// that the committed file is current (the test suite does this against its own database).
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { loadConfig } from '../src/config.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'

function runCodegen (databaseUrl: string, verify: boolean): number {
  const args = ['--dialect', 'postgres', '--url', databaseUrl, '--exclude-pattern', 'schema_migrations',
    '--date-parser', 'string', '--out-file', 'src/db/schema.ts', '--log-level', 'error',
    ...(verify ? ['--verify'] : [])]
  const result = spawnSync(path.resolve('node_modules/.bin/kysely-codegen'), args, { stdio: 'inherit' })
  return result.status ?? 1
}

async function main (): Promise<number> {
  const config = loadConfig()
  const embedded = config.DATABASE_URL === undefined
    ? await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
    : undefined
  try {
    const url = embedded?.ownerUrl ?? config.DATABASE_URL!
    await migrate(url)
    return runCodegen(url, process.argv.includes('--verify'))
  } finally {
    await embedded?.stop()
  }
}

main().then((code) => { process.exit(code) }, (error: unknown) => {
  console.error(`db:codegen: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
})
