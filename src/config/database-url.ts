import { BlockList, isIP } from 'node:net'

/*
 * Database URLs read as pg reads them, for the start-up checks of DATABASE_URL, APP_DATABASE_URL and
 * DB_LISTEN_URL (src/config.ts) and for the TLS options (src/db/tls.ts).
 */

/** A query parameter through which a database URL would set pg's TLS options, if it has one. */
export function sslParameterIn (url: string): string | undefined {
  const parsed = parseDatabaseUrl(url)
  return [...parsed?.searchParams.keys() ?? []].find((key) => /^ssl|^uselibpqcompat$/i.test(key))
}

/** The host a database URL connects to, read as pg reads it (a `host` parameter wins; none: PGHOST or localhost). */
export function databaseHost (url: string, env: Record<string, string | undefined> = process.env): string | undefined {
  const parsed = parseDatabaseUrl(url)
  if (parsed === undefined) return undefined
  const parameter = parsed.searchParams.get('host')
  if (parameter !== null && parameter !== '') return parameter
  const host = decodeURIComponent(parsed.hostname).replace(/^\[(.+)\]$/, '$1')
  if (host !== '' && host !== '___dummy___') return host
  return env.PGHOST !== undefined && env.PGHOST !== '' ? env.PGHOST : 'localhost'
}

function parseDatabaseUrl (url: string): URL | undefined {
  try {
    return new URL(url)
  } catch {
    // pg-connection-string's own fallback for a URL without a host (postgres://user@/db).
    try { return new URL(url.replace('@/', '@___dummy___/')) } catch { return undefined }
  }
}

const LOOPBACK = new BlockList()
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4')
LOOPBACK.addAddress('::1', 'ipv6')

/** This host only: localhost, 127.0.0.0/8, ::1, or a Unix socket directory. */
export function isLoopbackHost (host: string): boolean {
  if (host.startsWith('/') || host.toLowerCase() === 'localhost') return true
  const family = isIP(host)
  return family !== 0 && LOOPBACK.check(host, family === 4 ? 'ipv4' : 'ipv6')
}
