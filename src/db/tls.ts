import { X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { ConnectionOptions } from 'node:tls'
import { ConfigError, type Config } from '../config.ts'
import { sslParameterIn } from '../config/database-url.ts'

/**
 * TLS to PostgreSQL. Every pool and client in src/ and scripts/ takes its options from
 * connectionOptions(), so no connection is made without the configured TLS. The modes follow libpq's
 * meaning (not node-postgres's URL parsing, which reads sslmode=require as verify-full):
 * - disable: plaintext;
 * - require: encrypted, the server's certificate not checked (protects against eavesdropping only);
 * - verify-ca: the certificate must be signed by DATABASE_SSL_CA_FILE;
 * - verify-full: verify-ca, and the certificate must name the host of the URL.
 */
export type SslMode = Config['DATABASE_SSL_MODE']

/** Resolved once at start-up (the CA file read); plain data, so it reaches cluster workers as JSON. */
export interface DatabaseTls {
  mode: SslMode
  /** The PEM bundle of DATABASE_SSL_CA_FILE; without one, verify-full trusts Node's built-in CAs. */
  ca?: string | undefined
  caFile?: string | undefined
}

/** No TLS: local development, the embedded database, the test suite. */
export const PLAINTEXT: DatabaseTls = { mode: 'disable' }

/** The TLS settings the configuration asks for, reading DATABASE_SSL_CA_FILE; a bad file is a ConfigError. */
export function databaseTls (config: Pick<Config, 'DATABASE_SSL_MODE' | 'DATABASE_SSL_CA_FILE'>): DatabaseTls {
  const caFile = config.DATABASE_SSL_CA_FILE
  if (caFile === undefined) return { mode: config.DATABASE_SSL_MODE }
  let ca: string
  try {
    ca = readFileSync(caFile, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? 'no such file' : code ?? 'error'
    throw new ConfigError(`invalid environment variable DATABASE_SSL_CA_FILE: cannot read ${caFile} (${why})`)
  }
  if (!holdsCertificate(ca)) {
    throw new ConfigError(`invalid environment variable DATABASE_SSL_CA_FILE: ${caFile} holds no PEM certificate`)
  }
  return { mode: config.DATABASE_SSL_MODE, ca, caFile }
}

function holdsCertificate (pem: string): boolean {
  try {
    return new X509Certificate(pem).subject !== undefined
  } catch {
    return false
  }
}

/** pg's `ssl` option for a mode. Always explicit: `false` also keeps PGSSLMODE from turning TLS on unasked. */
export function sslOption (tls: DatabaseTls): false | ConnectionOptions {
  switch (tls.mode) {
    case 'disable': return false
    case 'require': return { rejectUnauthorized: false }
    // The chain is checked against the CA; the host name is not.
    case 'verify-ca': return { rejectUnauthorized: true, ca: tls.ca, checkServerIdentity: () => undefined }
    // pg hands the URL's host to tls.connect, whose default identity check holds it against the certificate.
    case 'verify-full': return { rejectUnauthorized: true, ...(tls.ca !== undefined && { ca: tls.ca }) }
  }
}

export interface ConnectionTls {
  connectionString: string
  ssl: false | ConnectionOptions
}

/** The options of a connection to `url` (spread them into pg.Pool / pg.Client options). */
export function connectionOptions (url: string, tls: DatabaseTls): ConnectionTls {
  // pg applies a URL's TLS parameters over the `ssl` option: such a URL would escape the setting.
  const parameter = sslParameterIn(url)
  if (parameter !== undefined) {
    throw new ConfigError(`a database URL carries ${parameter}: remove it; ` +
      'TLS is set by DATABASE_SSL_MODE and DATABASE_SSL_CA_FILE')
  }
  return { connectionString: url, ssl: sslOption(tls) }
}

/** A connection failed because of TLS: the message says why in one line. */
export class DatabaseTlsError extends ConfigError {
  override name = 'DatabaseTlsError'
}

// Node's certificate-verification codes that mean "signed by nobody we trust".
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED',
])

/**
 * The TLS reason a database connection failed, as a DatabaseTlsError, or undefined when the failure
 * has nothing to do with TLS. The one place that reads Node's TLS error codes and pg's messages.
 */
export function tlsFailure (error: unknown, tls: DatabaseTls): DatabaseTlsError | undefined {
  if (!(error instanceof Error)) return undefined
  const { code, host } = error as Error & { code?: string, host?: string }
  const trusted = tls.caFile !== undefined
    ? `DATABASE_SSL_CA_FILE (${tls.caFile})`
    : "Node's built-in CAs (set DATABASE_SSL_CA_FILE)"
  let why: string | undefined
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    why = `the database server's certificate does not name host ${host ?? '(unknown)'}: ` +
      'connect by a name the certificate carries'
  } else if (code !== undefined && UNTRUSTED.has(code)) {
    why = `the database server's certificate is not signed by ${trusted}`
  } else if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    why = `the database server's certificate is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not valid yet'}`
  } else if (error.message === 'The server does not support SSL connections') {
    why = `the database server does not accept TLS (DATABASE_SSL_MODE=${tls.mode}): turn ssl on in its configuration`
  } else if (code === '28000' && error.message.includes('no encryption')) {
    // pg_hba.conf has no entry for plaintext (a hostssl-only server, or a hostnossl reject line).
    why = `the database server refuses unencrypted connections (DATABASE_SSL_MODE=${tls.mode}): ` +
      'set DATABASE_SSL_MODE=verify-full'
  } else if (code !== undefined && /^ERR_(SSL|TLS)_/.test(code)) {
    why = `the TLS handshake with the database server failed (${error.message})`
  }
  return why === undefined ? undefined : new DatabaseTlsError(`database TLS: ${why}`, { cause: error })
}
