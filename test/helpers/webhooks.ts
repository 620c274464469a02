import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { ResolvedConfig } from '../../src/config.ts'
import { loadConfig } from '../../src/config.ts'
import { PLAINTEXT } from '../../src/db/tls.ts'
import { startJobWorker } from '../../src/jobs/job-worker.ts'
import type { RunningWorker } from '../../src/jobs/worker.ts'
import { TEST_WEBHOOK_SECRET_KEY, type TestApp } from './app.ts'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface Received {
  headers: IncomingHttpHeaders
  body: string
  /** performance.now() when the request arrived. */
  at: number
}

/** What the receiver answers a request with: a status, after a delay; or never (the socket is kept open). */
export type Answer = { status: number, delayMs?: number, body?: string } | 'hang'

export interface Receiver {
  url: string
  received: Received[]
  /** TCP connections accepted, including those that sent nothing. */
  connections: () => number
  /** Distinct webhook-id values received. */
  ids: () => Set<string>
  /** How the next requests are answered (default 200). */
  answer: (fn: (request: Received, index: number) => Answer) => void
}

/** A real HTTP server on 127.0.0.1 that records every webhook it is sent. */
export async function startReceiver (t: Teardown): Promise<Receiver> {
  const received: Received[] = []
  let connections = 0
  let answer: (request: Received, index: number) => Answer = () => ({ status: 200 })
  const hanging = new Set<ServerResponse>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const request = { headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), at: performance.now() }
      received.push(request)
      const reply = answer(request, received.length - 1)
      if (reply === 'hang') { hanging.add(res); return }
      setTimeout(() => { res.writeHead(reply.status).end(reply.body ?? 'ok') }, reply.delayMs ?? 0)
    })
  })
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const res of hanging) res.destroy()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    connections: () => connections,
    ids: () => new Set(received.map((r) => String(r.headers['webhook-id']))),
    answer: (fn) => { answer = fn },
  }
}

/**
 * The job worker as `npm start` runs it, on the test app's database: private targets allowed (the
 * receiver is on 127.0.0.1), short retries, lease and poll so the tests do not wait for production delays.
 */
export async function startTestWorker (
  t: Teardown, c: TestApp, overrides: Partial<ResolvedConfig> = {}, options: { metrics?: boolean } = {}
): Promise<RunningWorker> {
  const worker = await startJobWorker({
    ...loadConfig({}),
    DATABASE_URL: c.db.ownerUrl,
    APP_DATABASE_URL: c.db.appUrl,
    databaseTls: PLAINTEXT,
    WEBHOOK_SECRET_KEY: TEST_WEBHOOK_SECRET_KEY,
    WEBHOOK_ALLOW_PRIVATE_TARGETS: true,
    WEBHOOK_RETRY_BASE_MS: 50,
    WEBHOOK_TIMEOUT_MS: 2000,
    WORKER_POLL_INTERVAL_MS: 100,
    WORKER_LEASE_MS: 1500,
    WORKER_SHUTDOWN_GRACE_MS: 2000,
    ...overrides,
  }, c.app.log.child({ component: 'worker' }), options.metrics === true ? c.app.metrics : undefined)
  let stopped = false
  t.teardown(async () => { if (!stopped) await worker.stop() })
  return { ...worker, stop: async () => { stopped = true; await worker.stop() } }
}
