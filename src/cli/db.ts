import { DATABASE_HELP, type Command } from './command.ts'
import { CliError, EXIT, failureError } from './output.ts'

/** The database side, loaded when a command runs: --help and usage errors answer without it. */
async function load () {
  const [{ default: pg }, { connectionOptions, tlsFailure }, { MigrationError, migrate }, { runSafetyChecks },
    { checkShardPartitions }, { openDatabase }] = await Promise.all([
    import('pg'), import('../db/tls.ts'), import('../ops/migrate.ts'), import('../ops/safety-checks.ts'),
    import('../ops/shard-checks.ts'), import('./target.ts'),
  ])
  return {
    pg, connectionOptions, tlsFailure, MigrationError, migrate, runSafetyChecks, checkShardPartitions, openDatabase,
  }
}

const check: Command = {
  name: 'check',
  summary: 'Run the start-up safety checks on their own.',
  usage: '',
  help: 'Exits with 1, listing every problem on stderr, when the runtime role could bypass row-level security, ' +
    'a tenant table is not protected, or a sharded table lacks a partition for a live shard.\n' + DATABASE_HELP,
  args: { min: 0, max: 0 },
  target: 'database',
  run: async ({ out }) => {
    const { pg, connectionOptions, tlsFailure, runSafetyChecks, checkShardPartitions, openDatabase } = await load()
    // The checks run as the runtime role: DATABASE_URL alone is not enough here.
    const database = await openDatabase(out, { runtimeRole: true })
    const client = new pg.Client({
      ...connectionOptions(database.appUrl!, database.tls), application_name: 'rowfence-check',
    })
    // The shard check runs as the owner: only the owner's registry policy shows every tenant's shard.
    const owner = new pg.Client({
      ...connectionOptions(database.ownerUrl, database.tls), application_name: 'rowfence-check',
    })
    let report
    let problems: string[]
    try {
      await Promise.all([client.connect(), owner.connect()])
      report = await runSafetyChecks(client)
      problems = [...report.problems, ...await checkShardPartitions(owner)]
    } catch (error) {
      throw tlsFailure(error, database.tls) ?? error
    } finally {
      await Promise.all([client, owner].map(async (c) => c.end().catch((error: unknown) => {
        out.note(`check: closing a connection failed: ${(error as Error).message}`)
      })))
      await database.close()
    }
    const document = { ok: problems.length === 0, role: report.role, tenant_tables: report.tenantTables, problems }
    if (problems.length > 0) {
      if (out.json) out.result([], document)
      for (const problem of problems) process.stderr.write(`problem: ${problem}\n`)
      throw new CliError(`${problems.length} problem(s): the database is not safe to serve from`, EXIT.failure)
    }
    out.result([
      `ok: runtime role ${report.role} is confined by row-level security on ${report.tenantTables} tenant tables`,
      'ok: every sharded table has a partition for every live shard',
    ], document)
  },
}

const migrateCommand: Command = {
  name: 'migrate',
  summary: 'Apply the SQL migrations in sql/ as the owner role.',
  usage: '',
  help: 'Each migration in one transaction, under an advisory lock (two migrators at once are safe). A changed ' +
    'applied migration, or a failed one, exits with 1 naming the file.\n' + DATABASE_HELP,
  args: { min: 0, max: 0 },
  target: 'database',
  run: async ({ out }) => {
    const { tlsFailure, MigrationError, migrate, openDatabase } = await load()
    const database = await openDatabase(out)
    let result
    try {
      // Each applied migration as it goes (with --json, only the final document).
      const log = (line: string): void => { if (!out.json) out.result(line, null) }
      result = await migrate(database.ownerUrl, { log, tls: database.tls })
    } catch (error) {
      if (error instanceof MigrationError) throw failureError(error.message)
      throw tlsFailure(error, database.tls) ?? error
    } finally {
      await database.close()
    }
    out.result(result.applied.length === 0
      ? `database is up to date (${result.alreadyApplied} migrations applied earlier)`
      : `applied ${result.applied.length} migration(s)`,
    { applied: result.applied, already_applied: result.alreadyApplied })
  },
}

export const databaseCommands: Command[] = [check, migrateCommand]
