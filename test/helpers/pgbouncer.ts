import { spawn, spawnSync } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir, userInfo } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from './net.ts'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** The pgbouncer binary (PGBOUNCER, PATH, or Debian's /usr/sbin), or undefined when none is installed. */
export function findPgbouncer (): string | undefined {
  for (const candidate of [process.env.PGBOUNCER, 'pgbouncer', '/usr/sbin/pgbouncer']) {
    if (candidate === undefined || candidate === '') continue
    if (spawnSync(candidate, ['--version'], { encoding: 'utf8' }).status === 0) return candidate
  }
  return undefined
}

async function listening (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { resolve(false) })
  })
}

export interface Pgbouncer {
  /** `url` with its host and port replaced by PgBouncer's. */
  through: (url: string) => string
  /** Where PgBouncer listens, on 127.0.0.1. */
  port: number
}

/**
 * Starts a PgBouncer in transaction pooling mode in front of the server and database of `url`,
 * with `poolSize` server connections per user, for the users (and passwords) of `urls`. Stopped at
 * teardown. PgBouncer refuses to run as root: as root it runs as the `postgres` user (it exists
 * wherever PostgreSQL is installed) and its files are made readable to it.
 */
export async function startPgbouncer (
  t: Teardown,
  binary: string,
  urls: string[],
  options: { poolSize: number }
): Promise<Pgbouncer> {
  const target = new URL(urls[0]!)
  const database = decodeURIComponent(target.pathname.slice(1))
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-pgbouncer-'))
  const port = await freePort()
  const users = urls.map((u) => new URL(u))
    .map((u) => `"${decodeURIComponent(u.username)}" "${decodeURIComponent(u.password)}"`)
  await writeFile(path.join(dir, 'userlist.txt'), users.join('\n') + '\n', { mode: 0o644 })
  await writeFile(path.join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `${database} = host=${target.hostname} port=${target.port || '5432'} dbname=${database}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = scram-sha-256',
    `auth_file = ${path.join(dir, 'userlist.txt')}`,
    'pool_mode = transaction',
    `default_pool_size = ${options.poolSize}`,
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    'max_client_conn = 200',
    'server_reset_query =',
    'ignore_startup_parameters = extra_float_digits,options',
    `logfile = ${path.join(dir, 'pgbouncer.log')}`,
    `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
    '',
  ].join('\n'), { mode: 0o644 })
  await chmod(dir, 0o777)
  const asRoot = userInfo().uid === 0
  const child = spawn(binary, [...(asRoot ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  t.teardown(async () => {
    child.kill('SIGINT')
    await new Promise((resolve) => { if (child.exitCode !== null) resolve(null); else child.once('exit', resolve) })
    await rm(dir, { recursive: true, force: true })
  })
  const deadline = Date.now() + 10_000
  while (!(await listening(port))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`pgbouncer did not start: ${stderr}`)
    await sleep(50)
  }
  return {
    port,
    through: (url: string) => {
      const u = new URL(url)
      u.hostname = '127.0.0.1'
      u.port = String(port)
      return u.toString()
    },
  }
}
