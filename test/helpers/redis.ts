import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { freePort } from './net.ts'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** The Redis the tests share (.ci/run starts one here where none answers); TEST_REDIS_URL overrides it. */
export const SHARED_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/**
 * Why a test needing Redis cannot run here, or undefined when it can. With REQUIRE_REDIS=1 (.ci/run) a
 * missing Redis is an error instead, so that CI never skips these tests.
 */
export function redisMissing (why: string | undefined): string | undefined {
  if (why !== undefined && process.env.REQUIRE_REDIS === '1') {
    throw new Error(`Redis is required (REQUIRE_REDIS=1) but ${why}`)
  }
  return why
}

/** The redis-server binary, or undefined when it is not installed. */
export function findRedisServer (): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v redis-server || ls /usr/sbin/redis-server'], { encoding: 'utf8' })
  const path = found.stdout.trim().split('\n')[0]
  return found.status === 0 && path !== undefined && path !== '' ? path : undefined
}

/** Whether a Redis answers PING at `url` within `timeoutMs`. */
export async function redisAnswers (url: string, timeoutMs = 1000): Promise<boolean> {
  const client = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: timeoutMs,
    retryStrategy: () => null,
  })
  client.on('error', () => {}) // the answer is the point, not the error
  try {
    await client.connect()
    return await client.ping() === 'PONG'
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

export interface RedisServer {
  url: string
  /** Kills the server at once (SIGKILL), as a crash would. */
  kill: () => Promise<void>
}

/** A redis-server of the test's own on a free port, without persistence; killed at teardown. */
export async function startRedisServer (t: Teardown, binary: string): Promise<RedisServer> {
  const port = await freePort()
  const child = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  })
  const exited = once(child, 'exit')
  const kill = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await exited
  }
  t.teardown(kill)
  const url = `redis://127.0.0.1:${port}`
  const deadline = Date.now() + 10_000
  while (!await redisAnswers(url, 500)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return { url, kill }
}
