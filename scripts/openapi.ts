// npm run openapi: print the OpenAPI document the server serves at /openapi.json (or write it with
// --out <file>). npm run lint:openapi: write it to a temporary file and lint it with Redocly against
// redocly.yaml; exits with the linter's status.
// The document comes from buildApp itself, not listening: Fastify only completes the document once
// the app is ready, which takes a database (DATABASE_URL and APP_DATABASE_URL, else the embedded
// development database: the one `npm start` runs, or started here and stopped again).
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { buildApp } from '../src/app.ts'
import { ConfigError, loadConfig, type Config } from '../src/config.ts'
import { databaseTls } from '../src/db/tls.ts'
import { attachEmbedded, startEmbedded } from '../src/ops/embedded.ts'
import { migrate } from '../src/ops/migrate.ts'

export type OpenApiDocument = Record<string, unknown> & { paths: Record<string, Record<string, unknown>> }

interface Database { ownerUrl: string, appUrl: string }

/** The document as GET /openapi.json serves it, from an app on this database (only read: nothing is written). */
export async function servedDocument (database: Database, config: Config = loadConfig({})): Promise<OpenApiDocument> {
  const app = await buildApp({
    ...config,
    LOG_LEVEL: 'warn',
    DATABASE_URL: database.ownerUrl,
    APP_DATABASE_URL: database.appUrl,
    // Never used: no request is authenticated here.
    ADMIN_TOKEN: randomBytes(32).toString('base64url'),
    jwt: undefined,
    DB_POOL_MAX: 1,
    DB_OPERATOR_POOL_MAX: 1,
    // Starting up (compiling every schema) stalls the event loop, which load shedding would answer with a 503.
    MAX_EVENT_LOOP_DELAY_MS: 0,
    databaseTls: databaseTls(config),
  })
  try {
    await app.ready()
    const res = await app.inject({ method: 'GET', url: '/openapi.json' })
    if (res.statusCode !== 200) throw new Error(`GET /openapi.json answered ${res.statusCode}: ${res.body}`)
    return res.json<OpenApiDocument>()
  } finally {
    await app.close()
  }
}

/** The document from the configured database, else the running embedded one, else one started for this. */
export async function currentDocument (): Promise<OpenApiDocument> {
  const config = loadConfig()
  if (config.DATABASE_URL !== undefined && config.APP_DATABASE_URL !== undefined) {
    return servedDocument({ ownerUrl: config.DATABASE_URL, appUrl: config.APP_DATABASE_URL }, config)
  }
  const running = await attachEmbedded(config.DATA_DIR)
  if (running !== undefined) return servedDocument(running, config)
  const embedded = await startEmbedded({ dataDir: config.DATA_DIR, port: config.EMBEDDED_PG_PORT })
  try {
    await migrate(embedded.ownerUrl)
    return await servedDocument(embedded, config)
  } finally {
    await embedded.stop()
  }
}

/** Serialised the one way every tool here writes it: two-space JSON and a final newline. */
export const documentText = (document: unknown): string => JSON.stringify(document, null, 2) + '\n'

/** Lints a document with the repository's redocly.yaml: the linter's exit status and report. */
export async function lintDocument (document: unknown): Promise<{ status: number, report: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-openapi-'))
  try {
    const file = path.join(dir, 'openapi.json')
    await writeFile(file, documentText(document))
    const root = path.resolve(import.meta.dirname, '..')
    const result = spawnSync(path.join(root, 'node_modules/.bin/redocly'), [
      'lint', file, '--config', path.join(root, 'redocly.yaml'), '--format', 'stylish',
    ], {
      encoding: 'utf8',
      // No usage report or update check: CI machines need not reach Redocly's servers.
      env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' },
    })
    if (result.error !== undefined) throw result.error
    return { status: result.status ?? 1, report: `${result.stdout}${result.stderr}` }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function main (args: string[]): Promise<number> {
  const document = await currentDocument()
  if (args.includes('--lint')) {
    const { status, report } = await lintDocument(document)
    process.stdout.write(report)
    return status
  }
  const out = args.indexOf('--out')
  if (out === -1) process.stdout.write(documentText(document))
  else await writeFile(args[out + 1] ?? 'openapi.json', documentText(document))
  return 0
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then((code) => { process.exit(code) }, (error: unknown) => {
    const message = error instanceof ConfigError || error instanceof Error ? error.message : String(error)
    console.error(`openapi: ${message}`)
    process.exit(1)
  })
}
