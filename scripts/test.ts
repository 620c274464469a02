// The test runner behind `npm test` (after lint and typecheck). It owns the database's lifecycle:
//   1. TEST_DATABASE_URL (a superuser, or a CREATEROLE + CREATEDB login) when given;
//   2. else a PostgreSQL 15 container via testcontainers when a Docker engine answers;
//   3. else an embedded PostgreSQL in a temporary directory.
// It creates the roles, migrates a template database once, runs tap (each test file clones the
// template into a database of its own), then drops the template and stops what it started.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { bootstrapDatabase, withDatabase } from '../src/ops/bootstrap.ts'
import { startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'
import type { TestDatabaseEnv } from '../test/helpers/env.ts'
import { freePort } from '../test/helpers/net.ts'

const say = (line: string): void => { process.stderr.write(`test: ${line}\n`) }

interface Server {
  adminUrl: string
  source: string
  stop: () => Promise<void>
}

async function dockerServer (): Promise<Server | undefined> {
  let testcontainers: typeof import('testcontainers')
  try {
    testcontainers = await import('testcontainers')
    await testcontainers.getContainerRuntimeClient()
  } catch {
    return undefined
  }
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql')
  say('starting PostgreSQL 15 with testcontainers')
  const container = await new PostgreSqlContainer('postgres:15-alpine').start()
  return {
    adminUrl: container.getConnectionUri(),
    source: 'testcontainers',
    stop: async () => { await container.stop() },
  }
}

async function embeddedServer (): Promise<Server> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-test-'))
  const port = await freePort()
  say(`no TEST_DATABASE_URL and no Docker engine: starting an embedded PostgreSQL on port ${port}`)
  const embedded = await startEmbedded({ dataDir: dir, port, database: 'rowfence_unused', persistent: false })
  return {
    adminUrl: embedded.adminUrl,
    source: 'embedded',
    stop: async () => {
      await embedded.stop()
      await rm(dir, { recursive: true, force: true })
    },
  }
}

async function pickServer (): Promise<Server> {
  const given = process.env.TEST_DATABASE_URL
  if (given !== undefined && given !== '') {
    return { adminUrl: given, source: 'TEST_DATABASE_URL', stop: async () => {} }
  }
  return await dockerServer() ?? await embeddedServer()
}

async function dropDatabase (adminUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl })
  await client.connect()
  try {
    await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`)
  } finally {
    await client.end()
  }
}

function runTap (args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(path.resolve('node_modules/.bin/tap'), args, { stdio: 'inherit', env })
    const forward = (signal: NodeJS.Signals): void => { child.kill(signal) }
    process.on('SIGINT', forward)
    process.on('SIGTERM', forward)
    child.on('exit', (code, signal) => {
      process.off('SIGINT', forward)
      process.off('SIGTERM', forward)
      resolve(code ?? (signal !== null ? 1 : 0))
    })
  })
}

async function main (): Promise<number> {
  const server = await pickServer()
  const template = `rowfence_test_tpl_${randomBytes(4).toString('hex')}`
  try {
    const ownerPassword = randomBytes(18).toString('base64url')
    const appPassword = randomBytes(18).toString('base64url')
    const urls = await bootstrapDatabase({ adminUrl: server.adminUrl, database: template, ownerPassword, appPassword })
    await migrate(urls.ownerUrl)
    say(`database: ${server.source}; template ${template} migrated`)
    const env: TestDatabaseEnv = {
      adminUrl: withDatabase(server.adminUrl, 'postgres'),
      template,
      ownerRole: 'rowfence_owner',
      ownerPassword,
      appPassword,
    }
    return await runTap(process.argv.slice(2), { ...process.env, ROWFENCE_TEST_DB: JSON.stringify(env) })
  } finally {
    await dropDatabase(server.adminUrl, template)
      .catch((error: unknown) => { say(`could not drop ${template}: ${String(error)}`) })
    await server.stop()
  }
}

main().then((code) => { process.exit(code) }, (error: unknown) => {
  say(`failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exit(1)
})
