import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'

const ROOT = path.resolve(import.meta.dirname, '../..')

export interface CliRun { code: number | null, stdout: string, stderr: string }

/**
 * Only what a shell hands a program, so that nothing of the test process (its database, its config)
 * reaches the child unless a test passes it: `env` is the whole configuration.
 */
const bareEnv = (env: Record<string, string>): Record<string, string> =>
  ({ PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env })

/** Runs a program to its end and collects its output and exit code. */
export async function runProgram (command: string, args: string[], env: Record<string, string>): Promise<CliRun> {
  const child = spawn(command, args, { cwd: ROOT, env: bareEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stdout, stderr }
}

/** `rowfence <args>` as the package's bin runs it (node bin/rowfence.js), configured by `env` alone. */
export async function runCli (args: string[], env: Record<string, string>): Promise<CliRun> {
  return runProgram(process.execPath, [path.join(ROOT, 'bin/rowfence.js'), ...args], env)
}

export interface RunningServer {
  child: ChildProcess
  /** Everything the server printed on stderr so far. */
  output: () => string
  /**
   * Resolves with the URL once it listens; rejects when it exits first or after 120 s (an embedded
   * cluster's first start runs initdb).
   */
  listening: Promise<string>
  exited: Promise<CliRun>
  /** SIGTERM, and waits for the exit. */
  stop: () => Promise<CliRun>
}

/** The real entry point of `npm start` (src/server.ts) in a child process, configured by `env` alone. */
export function startServer (env: Record<string, string>): RunningServer {
  const child = spawn(path.join(ROOT, 'node_modules/.bin/tsx'), ['src/server.ts'], {
    cwd: ROOT,
    env: bareEnv({ LOG_LEVEL: 'warn', PORT: '0', MAX_EVENT_LOOP_DELAY_MS: '0', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.stdout!.resume()
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout: '', stderr }))
  const listening = new Promise<string>((resolve, reject) => {
    const deadline = Date.now() + 120_000
    const poll = (): void => {
      const url = /listening on (http:\/\/\S+)/.exec(stderr)?.[1]
      if (url !== undefined) return resolve(url)
      if (child.exitCode !== null) return reject(new Error(`the server exited: ${stderr}`))
      if (Date.now() > deadline) return reject(new Error(`the server did not listen within 120 s: ${stderr}`))
      setTimeout(poll, 50)
    }
    poll()
  })
  // A test that expects the server to refuse never awaits this: the rejection is its to see, not a crash.
  listening.catch(() => undefined)
  const stop = async (): Promise<CliRun> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    return exited
  }
  return { child, output: () => stderr, listening, exited, stop }
}

export interface Recorder {
  url: string
  port: number
  /** Every request it received, in order. */
  received: Array<{ method: string, url: string, authorization: string | undefined }>
  close: () => Promise<void>
}

/**
 * A host the operator token must not reach, on 127.0.0.1: it records what it receives and answers as an
 * operator API with no tenants would, or with a redirect to `redirectTo`.
 */
export async function listenRecorder (redirectTo?: string): Promise<Recorder> {
  const received: Recorder['received'] = []
  const server = createServer((request, response) => {
    const { method = '', url = '', headers: { authorization } } = request
    received.push({ method, url, authorization })
    request.resume()
    if (redirectTo !== undefined) {
      response.writeHead(307, { location: `${redirectTo}${request.url ?? '/'}` }).end()
      return
    }
    response.writeHead(200, { 'content-type': 'application/json' }).end('{"data":[],"next_cursor":null}')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  const close = async (): Promise<void> => {
    server.closeAllConnections()
    await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())))
  }
  return { url: `http://127.0.0.1:${port}`, port, received, close }
}
