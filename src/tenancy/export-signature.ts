import { createHmac, timingSafeEqual, type Hmac } from 'node:crypto'
import path from 'node:path'
import type { Config } from '../config.ts'
import { readOrCreateSecretFile } from '../ops/embedded.ts'

/**
 * The integrity proof of a tenant export. The NDJSON rows are followed by one trailer line,
 *   {"signature":{"version":1,"alg":"HMAC-SHA256","lines":N,"hmac":"<64 hex>"}}
 * where hmac is HMAC-SHA256, keyed with EXPORT_SIGNING_KEY, over a context string and then every byte
 * of the N lines before it (newlines included). It is computed as the lines stream out, and checked
 * the same way on import, so neither side holds the file in memory.
 */
export const EXPORT_FORMAT_VERSION = 1
const ALG = 'HMAC-SHA256'
// Binds the MAC to this use and format: a key also used for something else (it should not be)
// cannot be made to vouch for an export by a MAC computed there.
const CONTEXT = `rowfence-export/${EXPORT_FORMAT_VERSION}\n`
const TRAILER_START = Buffer.from('{"signature":')
const NEWLINE = 0x0a

/** An export that cannot be trusted or read; the message is one line. */
export class ExportSignatureError extends Error {
  override name = 'ExportSignatureError'
}

function fail (message: string): never {
  throw new ExportSignatureError(message)
}

/** How an export was checked: signed (and verified) or, only when allowed, unsigned. */
export interface ExportCheck {
  signed: boolean
  /** Data lines (the trailer not counted). */
  lines: number
}

export interface ReadExportOptions {
  /** EXPORT_SIGNING_KEY; without it a signed export cannot be verified and is refused. */
  key: string | undefined
  /** Accept an export without a trailer (made before exports were signed): nothing vouches for it. */
  allowUnsigned?: boolean | undefined
}

const newMac = (key: string): Hmac => createHmac('sha256', key).update(CONTEXT)

/** Passes the export's lines through (one line per chunk, as exportTenant yields them) and appends the trailer. */
export async function * signExport (lines: AsyncIterable<string>, key: string): AsyncGenerator<string> {
  const mac = newMac(key)
  let count = 0
  for await (const line of lines) {
    mac.update(line)
    count++
    yield line
  }
  const signature = { version: EXPORT_FORMAT_VERSION, alg: ALG, lines: count, hmac: mac.digest('hex') }
  yield `${JSON.stringify({ signature })}\n`
}

/** The lines of a byte stream, each with its newline (the last one may have none). */
async function * splitLines (chunks: AsyncIterable<Buffer | string>): AsyncGenerator<Buffer> {
  let pending: Buffer[] = []
  for await (const chunk of chunks) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    let start = 0
    for (let at = buffer.indexOf(NEWLINE); at !== -1; at = buffer.indexOf(NEWLINE, start)) {
      pending.push(buffer.subarray(start, at + 1))
      yield pending.length === 1 ? pending[0]! : Buffer.concat(pending)
      pending = []
      start = at + 1
    }
    if (start < buffer.length) pending.push(buffer.subarray(start))
  }
  if (pending.length > 0) yield Buffer.concat(pending)
}

const isTrailer = (line: Buffer): boolean => line.subarray(0, TRAILER_START.length).equals(TRAILER_START)
const text = (line: Buffer): string => line.toString('utf8', 0, line.at(-1) === NEWLINE ? line.length - 1 : line.length)

/**
 * Yields the data lines of an export (without newlines) and, once the input ends, checks the trailer
 * against every byte before it, throwing ExportSignatureError if anything is off: no trailer (unless
 * allowUnsigned), lines after it, a line count or HMAC that does not match. A caller must therefore
 * read to the end before trusting anything it was given: importTenant drains it once (verifyExport)
 * before writing, and again while writing, where the same check guards against the file changing.
 */
export async function * readExport (
  chunks: AsyncIterable<Buffer | string>, options: ReadExportOptions
): AsyncGenerator<string, ExportCheck> {
  const mac = options.key === undefined ? undefined : newMac(options.key)
  // The latest line is held back until the next one arrives: the trailer is known only as the last line.
  let held: Buffer | undefined
  let lines = 0
  for await (const line of splitLines(chunks)) {
    if (held !== undefined) {
      if (isTrailer(held)) throw new ExportSignatureError(`line ${lines + 2}: a line after the signature trailer`)
      mac?.update(held)
      lines++
      yield text(held)
    }
    held = line
  }
  if (held === undefined) throw new ExportSignatureError('the export is empty')
  if (!isTrailer(held)) {
    if (options.allowUnsigned !== true) {
      fail('the export is not signed (its last line is no signature trailer): it may be truncated or altered, ' +
        'or be from before exports were signed, which only --allow-unsigned imports')
    }
    lines++
    yield text(held)
    return { signed: false, lines }
  }
  if (mac === undefined) fail('the export is signed, but EXPORT_SIGNING_KEY is not set to verify it')
  const signature = parseTrailer(text(held))
  if (signature.lines !== lines) {
    fail(`the export has ${lines} lines before its signature trailer, which covers ${signature.lines}: ` +
      'it was truncated or altered')
  }
  const expected = mac.digest()
  const given = Buffer.from(signature.hmac, 'hex')
  if (!timingSafeEqual(expected, given)) {
    fail('the export\'s signature does not match: it was altered, or signed with another EXPORT_SIGNING_KEY')
  }
  return { signed: true, lines }
}

function parseTrailer (line: string): { lines: number, hmac: string } {
  let parsed: unknown
  try {
    parsed = JSON.parse(line)
  } catch {
    fail('the signature trailer is not JSON')
  }
  const s = (parsed as { signature?: Record<string, unknown> }).signature
  if (typeof s !== 'object' || s === null) fail('the signature trailer has no signature object')
  if (s.version !== EXPORT_FORMAT_VERSION) {
    fail(`unsupported export format version ${JSON.stringify(s.version)} (this one reads ${EXPORT_FORMAT_VERSION})`)
  }
  if (s.alg !== ALG) fail(`unsupported signature algorithm ${JSON.stringify(s.alg)} (expected ${ALG})`)
  if (!Number.isSafeInteger(s.lines) || (s.lines as number) < 0) fail('the signature trailer has no valid line count')
  if (typeof s.hmac !== 'string' || !/^[0-9a-f]{64}$/.test(s.hmac)) fail('the signature trailer has no valid hmac')
  return { lines: s.lines as number, hmac: s.hmac }
}

/** Reads a whole export and checks it (see readExport), keeping nothing of it. */
export async function verifyExport (
  chunks: AsyncIterable<Buffer | string>, options: ReadExportOptions
): Promise<ExportCheck> {
  const lines = readExport(chunks, options)
  for (;;) {
    const step = await lines.next()
    if (step.done === true) return step.value
  }
}

/**
 * EXPORT_SIGNING_KEY as configured or, outside production, generated once into DATA_DIR (like the
 * development operator token), so that `npm start`, `npm run export` and `npm run import` agree with no
 * setup. Undefined in production when not configured: exports and signed imports are then refused.
 */
export async function resolveExportSigningKey (
  config: Pick<Config, 'EXPORT_SIGNING_KEY' | 'NODE_ENV' | 'DATA_DIR'>
): Promise<string | undefined> {
  if (config.EXPORT_SIGNING_KEY !== undefined) return config.EXPORT_SIGNING_KEY
  if (config.NODE_ENV === 'production') return undefined
  return readOrCreateSecretFile(exportSigningKeyFile(config.DATA_DIR))
}

export const exportSigningKeyFile = (dataDir: string): string => path.resolve(dataDir, 'export-signing-key')

export const MISSING_KEY = 'EXPORT_SIGNING_KEY is not set: exports are signed with it and imports verified with it ' +
  '(required in production; at least 43 characters, e.g. openssl rand -base64 32)'
