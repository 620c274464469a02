import { promises as dns } from 'node:dns'
import http from 'node:http'
import https from 'node:https'
import { isIP, type LookupFunction, type Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import ipaddr from 'ipaddr.js'

/**
 * The one way webhooks leave the server. A tenant chooses the URL, so the request must not reach what only
 * the server can reach (loopback, the private network, the cloud metadata service): addresses are checked
 * after DNS, before any connection, and again on the socket actually connected.
 */
export type AddressClass = 'public' | 'private' | 'loopback' | 'link-local' | 'metadata' | 'reserved'

// Instance metadata and platform services that hand out credentials. Most fall in ranges refused anyway;
// 168.63.129.16 (Azure's platform endpoint) is a public address, so only this list catches it.
const METADATA = new Set([
  '169.254.169.254', '169.254.170.2', '100.100.100.200', '168.63.129.16', 'fd00:ec2::254',
])
const MAX_URL_LENGTH = 2048
const USER_AGENT = 'rowfence-webhooks/1'
const MAX_LOCATION_CHARS = 200

function classifyV4 (address: ipaddr.IPv4): AddressClass {
  if (METADATA.has(address.toString())) return 'metadata'
  switch (address.range()) {
    case 'unicast': return 'public'
    case 'private': return 'private'
    case 'loopback': return 'loopback'
    case 'linkLocal': return 'link-local'
    default: return 'reserved' // unspecified, CGNAT, multicast, broadcast, documentation, benchmarking...
  }
}

function classifyV6 (address: ipaddr.IPv6): AddressClass {
  const parts = address.parts
  if (METADATA.has(new ipaddr.IPv6(parts).toString())) return 'metadata'
  if (address.isIPv4MappedAddress()) return classifyV4(address.toIPv4Address())
  // ipaddr.js names more ranges than its typings list; compare as strings.
  const range: string = address.range()
  switch (range) {
    case 'loopback': return 'loopback'
    case 'uniqueLocal': case 'deprecatedSiteLocal': return 'private'
    case 'linkLocal': return 'link-local'
    // Only global unicast (2000::/3) is public: this also refuses IPv4-compatible ::a.b.c.d.
    case 'unicast': return ((parts[0] ?? 0) & 0xe000) === 0x2000 ? 'public' : 'reserved'
    case 'rfc6052': {
      // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits: judge that one.
      const wellKnown = parts[0] === 0x64 && parts[1] === 0xff9b && parts.slice(2, 6).every((part) => part === 0)
      if (!wellKnown) return 'reserved'
      const [high = 0, low = 0] = parts.slice(6)
      return classifyV4(new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]))
    }
    default: return 'reserved' // unspecified, multicast, 6to4, Teredo, documentation, discard...
  }
}

/**
 * What an address is, for deciding whether a webhook may go there. Takes addresses as dns.lookup and
 * socket.remoteAddress give them; anything else (including shorthand like 127.1) is 'reserved'.
 */
export function classifyAddress (ip: string): AddressClass {
  if (isIP(ip) === 0) return 'reserved'
  try {
    const address = ipaddr.parse(ip)
    return address.kind() === 'ipv4' ? classifyV4(address as ipaddr.IPv4) : classifyV6(address as ipaddr.IPv6)
  } catch {
    return 'reserved' // isIP and ipaddr.js disagree: not worth the risk
  }
}

// allowPrivate (development, self-hosting) opens loopback and private networks, never the metadata service.
function refusal (ip: string, allowPrivate: boolean): AddressClass | null {
  const kind = classifyAddress(ip)
  return kind === 'public' || (allowPrivate && kind !== 'metadata') ? null : kind
}

export type UrlCheck = { ok: true, url: URL } | { ok: false, reason: string }

/** The URL's host when it is an IP address literal (brackets removed), else undefined. */
function literalAddress (url: URL): string | undefined {
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
  return isIP(host) === 0 ? undefined : host
}

/**
 * Whether a URL may be a webhook endpoint, judged on its text alone (at creation, and again before each
 * delivery). Host names are judged later, on what they resolve to.
 */
export function checkWebhookUrl (text: string, options: { allowPrivate: boolean }): UrlCheck {
  if (text.length > MAX_URL_LENGTH) return { ok: false, reason: `the URL is longer than ${MAX_URL_LENGTH} characters` }
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return { ok: false, reason: 'not an absolute URL' }
  }
  if (url.protocol !== 'https:' && !(options.allowPrivate && url.protocol === 'http:')) {
    return { ok: false, reason: options.allowPrivate ? 'the URL must be http or https' : 'the URL must be https' }
  }
  if (url.username !== '' || url.password !== '') return { ok: false, reason: 'the URL must not hold credentials' }
  if (url.hostname === '') return { ok: false, reason: 'the URL has no host' }
  const literal = literalAddress(url)
  const kind = literal === undefined ? null : refusal(literal, options.allowPrivate)
  if (kind !== null) return { ok: false, reason: `${String(literal)} is a ${kind} address` }
  return { ok: true, url }
}

export interface DeliveryOutcome {
  /** A 2xx status arrived. */
  ok: boolean
  status: number | null
  latencyMs: number
  /** The start of the response body, as UTF-8 (invalid bytes replaced). */
  responseExcerpt: string
  error: string | null
  /** The address rules stopped the request: nothing was sent. */
  refused: boolean
  /** The address connected to, or the one refused. */
  address: string | null
}

export interface PostOptions {
  allowPrivate: boolean
  /** From the start (DNS included) until the TCP connection is up. */
  connectTimeoutMs: number
  /** From the start until the response is read. */
  timeoutMs: number
  /** Body bytes read before the connection is dropped. */
  maxResponseBytes: number
  excerptBytes: number
  /** Abandons the attempt (the worker is stopping): it resolves at once as failed. */
  signal?: AbortSignal
  /**
   * Test seam: replaces the checked DNS lookup (and so its address check), to show that the check on the
   * connected socket holds on its own. Production code leaves it unset.
   */
  lookup?: LookupFunction
}

class RefusedAddressError extends Error {
  override name = 'RefusedAddressError'
  constructor (readonly address: string, message: string) { super(message) }
}

/** RFC 6761: localhost and its subdomains are loopback, never a question for DNS. */
const LOCAL_NAME = /^(.+\.)?localhost\.?$/i

/**
 * A name's addresses from DNS, asked through c-ares (dns.Resolver) with a timeout rather than through
 * getaddrinfo: that one runs on libuv's small thread pool and cannot be abandoned, so a tenant's name
 * whose nameserver never answers would hold those threads (and what else uses them: file I/O, crypto)
 * long after the attempt gave up. /etc/hosts is not consulted; a webhook target is a public name.
 */
async function resolveAll (hostname: string, timeoutMs: number): Promise<Array<{ address: string, family: number }>> {
  if (LOCAL_NAME.test(hostname)) return [{ address: '127.0.0.1', family: 4 }, { address: '::1', family: 6 }]
  const resolver = new dns.Resolver({ timeout: Math.max(1, timeoutMs), tries: 1 })
  const [v4, v6] = await Promise.allSettled([resolver.resolve4(hostname), resolver.resolve6(hostname)])
  const found = [
    ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
    ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
  ]
  if (found.length === 0) {
    if (v4.status === 'rejected') throw v4.reason
    throw Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' })
  }
  return found
}

function checkedLookup (allowPrivate: boolean, timeoutMs: number): LookupFunction {
  return (hostname, options, callback) => {
    resolveAll(hostname, timeoutMs).then((addresses) => {
      // Every address is judged, not only the first: Node may try them all (happy eyeballs).
      for (const { address } of addresses) {
        const kind = refusal(address, allowPrivate)
        if (kind !== null) {
          callback(new RefusedAddressError(address, `${hostname} resolves to ${address}, a ${kind} address`), '')
          return
        }
      }
      const [first] = addresses
      if (options.all === true) callback(null, addresses)
      else callback(null, first!.address, first!.family)
    }, (error: NodeJS.ErrnoException) => { callback(error, '') })
  }
}

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/**
 * POSTs one webhook. Never throws: every failure is an outcome. Redirects are not followed (the target
 * would escape the checks); each attempt has its own connection, so nothing is shared between tenants.
 */
export async function postWebhook (
  url: string, body: string, headers: Record<string, string>, options: PostOptions
): Promise<DeliveryOutcome> {
  const started = performance.now()
  const outcome = (fields: Partial<DeliveryOutcome>): DeliveryOutcome => ({
    ok: false,
    status: null,
    latencyMs: Math.round(performance.now() - started),
    responseExcerpt: '',
    error: null,
    refused: false,
    address: null,
    ...fields,
  })
  try {
    const checked = checkWebhookUrl(url, options)
    if (!checked.ok) {
      const address = URL.canParse(url) ? literalAddress(new URL(url)) ?? null : null
      return outcome({ refused: true, error: checked.reason, address })
    }
    return await send(checked.url, body, headers, options, outcome)
  } catch (error) {
    return outcome({ error: messageOf(error) }) // e.g. a header value Node refuses
  }
}

function send (
  url: URL, body: string, headers: Record<string, string>, options: PostOptions,
  outcome: (fields: Partial<DeliveryOutcome>) => DeliveryOutcome
): Promise<DeliveryOutcome> {
  return new Promise((resolve) => {
    const sent: Record<string, string> = {}
    for (const [name, value] of Object.entries(headers)) {
      if (!['user-agent', 'content-length'].includes(name.toLowerCase())) sent[name] = value
    }
    sent['user-agent'] = USER_AGENT
    sent['content-length'] = String(Buffer.byteLength(body))
    const transport = url.protocol === 'https:' ? https : http
    const request = transport.request(url, {
      method: 'POST',
      headers: sent,
      agent: false,
      lookup: options.lookup ?? checkedLookup(options.allowPrivate, options.connectTimeoutMs),
    })

    let settled = false
    let status: number | null = null
    let address: string | null = null
    let location: string | undefined
    const excerpt: Buffer[] = []
    let kept = 0
    const connectTimer = setTimeout(() => {
      finish({ error: `no connection within ${options.connectTimeoutMs} ms` })
    }, options.connectTimeoutMs)
    const deadline = setTimeout(() => {
      finish(status !== null ? responded() : { error: `no response within ${options.timeoutMs} ms` })
    }, options.timeoutMs)
    const abandon = (): void => { finish({ error: 'abandoned: the worker is stopping' }) }
    const finish = (fields: Partial<DeliveryOutcome>): void => {
      if (settled) return
      settled = true
      clearTimeout(connectTimer)
      clearTimeout(deadline)
      options.signal?.removeEventListener('abort', abandon)
      request.destroy()
      const responseExcerpt = Buffer.concat(excerpt).toString('utf8')
      resolve(outcome({ status, address, responseExcerpt, ...fields }))
    }
    // Once a status has arrived it decides the outcome; the body only feeds the excerpt, so a body cut
    // short (by the size limit, the deadline or the peer) does not turn an accepted delivery into a failure.
    const responded = (): Partial<DeliveryOutcome> => {
      const code = status ?? 0
      if (code >= 300 && code < 400) {
        const target = location === undefined ? '' : ` to ${location.slice(0, MAX_LOCATION_CHARS)}`
        return { ok: false, error: `redirect${target} not followed` }
      }
      return { ok: code >= 200 && code < 300 }
    }

    if (options.signal?.aborted === true) abandon()
    else options.signal?.addEventListener('abort', abandon)

    request.on('socket', (socket: Socket) => {
      // Prepended so that it runs before anything sends on the connection (TLS starts its handshake
      // from its own 'connect' listener). Catches what the lookup did not see: a rebinding resolver,
      // a literal address, any path around the lookup.
      socket.prependListener('connect', () => {
        clearTimeout(connectTimer)
        const remote = socket.remoteAddress
        address = remote ?? null
        const kind = remote === undefined ? 'unknown' : refusal(remote, options.allowPrivate)
        if (kind !== null) {
          const why = `connected to ${String(remote)}, a ${kind} address`
          socket.destroy(new RefusedAddressError(remote ?? 'unknown', why))
        }
      })
    })
    request.on('response', (response) => {
      status = response.statusCode ?? null
      location = response.headers.location
      let received = 0
      response.on('data', (chunk: Buffer) => {
        received += chunk.length
        if (kept < options.excerptBytes) {
          const piece = chunk.subarray(0, options.excerptBytes - kept)
          excerpt.push(piece)
          kept += piece.length
        }
        if (received >= options.maxResponseBytes) finish(responded())
      })
      response.on('end', () => { finish(responded()) })
      response.on('error', () => { finish(responded()) })
    })
    request.on('error', (error) => {
      if (error instanceof RefusedAddressError) finish({ refused: true, address: error.address, error: error.message })
      else finish(status !== null ? responded() : { error: messageOf(error) })
    })
    request.on('close', () => {
      finish(status !== null ? responded() : { error: 'the connection closed without a response' })
    })
    request.end(body)
  })
}
