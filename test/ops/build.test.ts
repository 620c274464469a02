// The image's way of running, without Docker: compile src/ as `npm run build` does, lay it out as the image
// does (dist/, sql/, package.json, node_modules), and run the Dockerfile's own CMD and HEALTHCHECK commands
// with plain node against a test database — so the compiled server cannot rot while tests run the sources.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { access, copyFile, mkdtemp, readFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createTestDatabase } from '../helpers/db.ts'

const ROOT = path.resolve(import.meta.dirname, '../..')
const ADMIN_TOKEN = 'build-test-operator-token-0123456789abcdef'

interface Run { code: number | null, stdout: string, stderr: string }

function run (command: string[], options: { cwd: string, env?: Record<string, string> }): Promise<Run> {
  const child = spawn(command[0]!, command.slice(1), {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  return once(child, 'close').then(([code]) => ({ code: code as number | null, stdout, stderr }))
}

/** An exec-form instruction of the Dockerfile (`CMD [...]`, `HEALTHCHECK ... CMD [...]`), `node` made this node. */
function dockerCommand (dockerfile: string, instruction: 'CMD' | 'HEALTHCHECK'): string[] {
  const line = dockerfile.split('\n').find((l) => l.startsWith(`${instruction} `))
  const json = line === undefined ? undefined : /CMD (\[.*\])\s*$/.exec(line)?.[1]
  if (json === undefined) throw new Error(`the Dockerfile has no exec-form ${instruction}`)
  const command = JSON.parse(json) as string[]
  if (command[0] !== 'node') throw new Error(`${instruction} does not run node: ${json}`)
  return [process.execPath, ...command.slice(1)]
}

t.test('the compiled server starts as the image runs it and answers /readyz', async (t) => {
  const app = await mkdtemp(path.join(tmpdir(), 'rowfence-build-'))
  t.teardown(() => rm(app, { recursive: true, force: true }))
  // Types are checked by `npm run typecheck`; this compiles the same files with the same settings (emit only,
  // which is what could break at run time: rewritten import specifiers, paths relative to the output).
  const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc')
  const build = await run([process.execPath, tsc, '-p', path.join(ROOT, 'tsconfig.build.json'), '--noCheck',
    '--outDir', path.join(app, 'dist')], { cwd: ROOT })
  t.equal(build.code, 0, 'tsc -p tsconfig.build.json compiles', { output: build.stdout + build.stderr })
  await symlink(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'), 'dir')
  await symlink(path.join(ROOT, 'sql'), path.join(app, 'sql'), 'dir')
  await copyFile(path.join(ROOT, 'package.json'), path.join(app, 'package.json'))

  const dockerfile = await readFile(path.join(ROOT, 'Dockerfile'), 'utf8')
  const named = await Promise.all(['docker-compose.yml', 'docs/operations.md']
    .map((file) => readFile(path.join(ROOT, file), 'utf8')))
  const entries = new Set([dockerfile, ...named].join('\n').match(/\bdist\/[\w/.-]+\.js\b/g))
  t.ok(entries.has('dist/server.js'), 'the Dockerfile runs dist/server.js')
  for (const entry of entries) {
    await t.resolves(access(path.join(app, entry)), `${entry}, named by the Dockerfile, compose or the docs, is built`)
  }
  const help = await run([process.execPath, 'dist/ops/setup-cli.js', '--help'], { cwd: app })
  t.equal(help.code, 0, 'the compiled setup runs as a program', { stderr: help.stderr })
  t.match(help.stdout, /usage: db:setup/, 'and prints its usage')

  const db = await createTestDatabase(t)
  const [node, ...args] = dockerCommand(dockerfile, 'CMD')
  const server = spawn(node!, args, {
    cwd: app,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      // What the image and docker-compose.yml set (port 0 here: any free one).
      NODE_ENV: 'production',
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'warn',
      DATABASE_URL: db.ownerUrl,
      APP_DATABASE_URL: db.appUrl,
      ADMIN_TOKEN,
      JWT_SECRET: 'build-test-jwt-secret-0123456789abcdef',
      DATABASE_ALLOW_PLAINTEXT: 'true',
      // Load shedding is tested elsewhere; on a busy machine (or under coverage) start-up alone can lag the
      // event loop past its 1 s default and turn the first requests away.
      MAX_EVENT_LOOP_DELAY_MS: '0',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => { server.kill('SIGKILL') })
  let stderr = ''
  server.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  server.stdout.resume()
  const exited = once(server, 'exit')
  const deadline = Date.now() + 60_000
  let url: string | undefined
  while (url === undefined) {
    url = /listening on (http:\/\/\S+)/.exec(stderr)?.[1]
    if (url !== undefined) break
    if (Date.now() > deadline || server.exitCode !== null) {
      throw new Error(`the compiled server did not start: ${stderr}`)
    }
    await sleep(50)
  }

  const ready = await fetch(`${url}/readyz`)
  t.equal(ready.status, 200, '/readyz answers 200')
  t.same(await ready.json(), { status: 'ready' }, 'and says ready')
  const tenant = await fetch(`${url}/admin/v1/tenants`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Built', slug: 'built' }),
  })
  t.equal(tenant.status, 201, 'a request through the whole pipeline works compiled')
  await tenant.arrayBuffer()

  const port = new URL(url).port
  const healthcheck = dockerCommand(dockerfile, 'HEALTHCHECK')
  const healthy = await run(healthcheck, { cwd: app, env: { HOST: '0.0.0.0', PORT: port } })
  t.equal(healthy.code, 0, 'the HEALTHCHECK command passes', { stderr: healthy.stderr })

  server.kill('SIGTERM')
  const [code] = await exited
  t.equal(code, 0, 'SIGTERM stops it cleanly')
  t.notMatch(stderr, /error|failed/i, 'nothing went wrong on the way', { stderr })
  const unhealthy = await run(healthcheck, { cwd: app, env: { PORT: port } })
  t.equal(unhealthy.code, 1, 'the HEALTHCHECK command fails once the server is gone')
})
