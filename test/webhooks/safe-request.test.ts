import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, LookupFunction } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import {
  checkWebhookUrl, classifyAddress, postWebhook, type PostOptions,
} from '../../src/webhooks/safe-request.ts'
import { freePort } from '../helpers/net.ts'

interface TestServer {
  url: string
  port: number
  connections: number
  requests: IncomingMessage[]
  bodies: string[]
  bytesReceived: number
}

/** A server on 127.0.0.1 that counts what reaches it, before any HTTP parsing. */
type Handler = (req: IncomingMessage, res: ServerResponse) => void
async function startServer (t: Test, handler: Handler): Promise<TestServer> {
  const server = createServer((req, res) => {
    state.requests.push(req)
    let body = ''
    req.on('data', (chunk: Buffer) => { body += chunk.toString('utf8') })
    req.on('end', () => { state.bodies.push(body) })
    handler(req, res)
  })
  const state: TestServer = { url: '', port: 0, connections: 0, requests: [], bodies: [], bytesReceived: 0 }
  server.on('connection', (socket) => {
    state.connections++
    socket.on('data', (chunk: Buffer) => { state.bytesReceived += chunk.length })
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  state.port = (server.address() as AddressInfo).port
  state.url = `http://127.0.0.1:${state.port}`
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => { resolve() })
  }))
  return state
}

const local: PostOptions = {
  allowPrivate: true, connectTimeoutMs: 2000, timeoutMs: 5000, maxResponseBytes: 65536, excerptBytes: 1024,
}
const strict: PostOptions = { ...local, allowPrivate: false }
const body = '{"type":"invoice.created"}'
const json = { 'content-type': 'application/json', 'webhook-id': 'msg_1' }
const lyingLookup = (address: string): LookupFunction => (_hostname, options, callback) => {
  if (options.all === true) callback(null, [{ address, family: 4 }])
  else callback(null, address, 4)
}

t.test('a 2xx response is a success, with its excerpt and the connected address', async (t) => {
  const server = await startServer(t, (req, res) => { req.on('end', () => { res.writeHead(201).end('accepted ✓') }) })
  const outcome = await postWebhook(`${server.url}/hooks`, body, { ...json, 'User-Agent': 'spoofed' }, local)
  t.match(outcome, { ok: true, status: 201, responseExcerpt: 'accepted ✓', error: null, refused: false })
  t.equal(outcome.address, '127.0.0.1')
  t.ok(outcome.latencyMs >= 0 && outcome.latencyMs < 5000)
  const [request] = server.requests
  t.equal(request?.method, 'POST')
  t.equal(request?.url, '/hooks')
  t.match(request?.headers, {
    'user-agent': 'rowfence-webhooks/1',
    'content-type': 'application/json',
    'webhook-id': 'msg_1',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
  })
  t.same(server.bodies, [body])
})

t.test('a 500 is recorded as a failure with its status and excerpt', async (t) => {
  const server = await startServer(t, (_req, res) => { res.writeHead(500).end('database down') })
  const outcome = await postWebhook(server.url, body, json, local)
  t.match(outcome, { ok: false, status: 500, responseExcerpt: 'database down', error: null, refused: false })
})

t.test('a redirect is recorded and not followed', async (t) => {
  const target = await startServer(t, (_req, res) => { res.end('should not be reached') })
  const server = await startServer(t, (_req, res) => { res.writeHead(302, { location: `${target.url}/x` }).end() })
  const outcome = await postWebhook(server.url, body, json, local)
  t.match(outcome, { ok: false, status: 302, refused: false })
  t.equal(outcome.error, `redirect to ${target.url}/x not followed`)
  t.equal(target.connections, 0)
})

t.test('a server that does not answer times out within the deadline', async (t) => {
  const server = await startServer(t, () => {})
  const outcome = await postWebhook(server.url, body, json, { ...local, timeoutMs: 300 })
  t.match(outcome, { ok: false, status: null, error: 'no response within 300 ms', refused: false })
  t.ok(outcome.latencyMs >= 250 && outcome.latencyMs < 2000, `${outcome.latencyMs} ms`)
})

t.test('a connection that never starts times out at the connect timeout', async (t) => {
  const never: LookupFunction = () => {}
  const options = { ...local, connectTimeoutMs: 200, lookup: never }
  const outcome = await postWebhook('http://stuck.example/', body, json, options)
  t.match(outcome, { ok: false, error: 'no connection within 200 ms', refused: false, address: null })
  t.ok(outcome.latencyMs < 2000, `${outcome.latencyMs} ms`)
})

t.test('an endless response is read up to the limit, then the connection is dropped', async (t) => {
  let written = 0
  const server = await startServer(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    const chunk = Buffer.alloc(16384, 'a')
    const pump = (): void => {
      while (!res.destroyed && res.write(chunk)) written += chunk.length
      if (!res.destroyed) res.once('drain', pump)
    }
    pump()
  })
  const outcome = await postWebhook(server.url, body, json, { ...local, maxResponseBytes: 100_000, excerptBytes: 10 })
  t.match(outcome, { ok: true, status: 200, responseExcerpt: 'aaaaaaaaaa', error: null })
  await sleep(50)
  t.ok(written < 10_000_000, `the server stopped after ${written} bytes`)
})

t.test('the excerpt is decoded as UTF-8 with a character cut in half replaced', async (t) => {
  const server = await startServer(t, (_req, res) => { res.end('ok é') })
  const outcome = await postWebhook(server.url, body, json, { ...local, excerptBytes: 4 })
  t.equal(outcome.responseExcerpt, 'ok \uFFFD')
})

t.test('network errors are outcomes, never exceptions', async (t) => {
  const closed = await postWebhook(`http://127.0.0.1:${await freePort()}/`, body, json, local)
  t.match(closed, { ok: false, status: null, error: /ECONNREFUSED/, refused: false })
  const badHeader = await postWebhook('http://127.0.0.1:1/', body, { 'x-bad': 'a\r\nb' }, local)
  t.match(badHeader, { ok: false, error: /invalid character/i, refused: false })
})

t.test('without allowPrivate, local and private targets are refused before any connection', async (t) => {
  const server = await startServer(t, (_req, res) => { res.end() })
  const cases: Array<[string, RegExp]> = [
    [`http://127.0.0.1:${server.port}/`, /must be https/],
    [`https://127.0.0.1:${server.port}/`, /127\.0\.0\.1 is a loopback address/],
    [`http://localhost:${server.port}/`, /must be https/],
    [`https://localhost:${server.port}/`, /^localhost resolves to (127\.0\.0\.1|::1), a loopback address$/],
    ['https://10.0.0.1/', /10\.0\.0\.1 is a private address/],
    ['https://169.254.169.254/latest/meta-data', /169\.254\.169\.254 is a metadata address/],
    [`https://[::1]:${server.port}/`, /::1 is a loopback address/],
    ['https://[fd00::1]/', /fd00::1 is a private address/],
    [`https://[::ffff:127.0.0.1]:${server.port}/`, /::ffff:7f00:1 is a loopback address/],
    [`https://2130706433:${server.port}/`, /127\.0\.0\.1 is a loopback address/],
  ]
  for (const [url, reason] of cases) {
    const outcome = await postWebhook(url, body, json, strict)
    t.match(outcome, { ok: false, refused: true, status: null, error: reason }, url)
  }
  await sleep(50)
  t.equal(server.connections, 0, 'the server saw no connection')
})

t.test('allowPrivate opens loopback but never the metadata service', async (t) => {
  const outcome = await postWebhook('http://169.254.169.254/latest/meta-data', body, json, local)
  t.match(outcome, { refused: true, error: /metadata address/ })
})

t.test('an address the lookup did not check is refused on the connected socket, before anything is sent',
  async (t) => {
    const server = await startServer(t, (_req, res) => { res.end() })
    const url = `https://rebinding.example:${server.port}/`
    const outcome = await postWebhook(url, body, json, { ...strict, lookup: lyingLookup('127.0.0.1') })
    t.match(outcome, {
      ok: false,
      refused: true,
      status: null,
      address: '127.0.0.1',
      error: 'connected to 127.0.0.1, a loopback address',
    })
    await sleep(50)
    t.equal(server.requests.length, 0)
    t.equal(server.bytesReceived, 0, 'not even a TLS hello')
    // The same seam with allowPrivate reaches the server: the refusal above is the socket check's.
    const allowed = await postWebhook(`http://rebinding.example:${server.port}/`, body, json,
      { ...local, lookup: lyingLookup('127.0.0.1') })
    t.match(allowed, { ok: true, status: 200, address: '127.0.0.1' })
  })

t.test('addresses are classified, IPv4-mapped IPv6 as its IPv4', async (t) => {
  const table: Array<[string, string]> = [
    ['93.184.215.14', 'public'], ['8.8.8.8', 'public'], ['2606:4700:4700::1111', 'public'],
    ['10.1.2.3', 'private'], ['172.16.0.1', 'private'], ['192.168.1.1', 'private'], ['fd00::1', 'private'],
    ['fc00::1', 'private'], ['127.0.0.1', 'loopback'], ['127.8.9.10', 'loopback'], ['::1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'], ['::ffff:10.0.0.1', 'private'], ['::ffff:8.8.8.8', 'public'],
    ['169.254.1.1', 'link-local'], ['fe80::1', 'link-local'], ['fe80::1%eth0', 'link-local'],
    ['169.254.169.254', 'metadata'], ['::ffff:169.254.169.254', 'metadata'], ['fd00:ec2::254', 'metadata'],
    ['fd00:ec2:0:0::0254', 'metadata'], ['168.63.129.16', 'metadata'], ['64:ff9b::a9fe:a9fe', 'metadata'],
    ['64:ff9b::808:808', 'public'], ['64:ff9b::7f00:1', 'loopback'],
    ['0.0.0.0', 'reserved'], ['0.1.2.3', 'reserved'], ['100.64.0.1', 'reserved'], ['224.0.0.1', 'reserved'],
    ['255.255.255.255', 'reserved'], ['192.0.2.1', 'reserved'], ['198.51.100.1', 'reserved'],
    ['203.0.113.1', 'reserved'], ['240.0.0.1', 'reserved'], ['::', 'reserved'], ['ff02::1', 'reserved'],
    ['2001:db8::1', 'reserved'], ['2002:7f00:1::1', 'reserved'], ['::7f00:1', 'reserved'],
    ['127.1', 'reserved'], ['localhost', 'reserved'], ['', 'reserved'],
  ]
  for (const [ip, kind] of table) t.equal(classifyAddress(ip), kind, ip)
})

t.test('webhook URLs are checked on their text', async (t) => {
  const refused: Array<[string, boolean, RegExp]> = [
    ['http://example.com/hook', false, /must be https/],
    ['ftp://example.com/hook', true, /must be http or https/],
    ['https://user:pass@example.com/', false, /credentials/],
    ['https://user@example.com/', false, /credentials/],
    ['not a url', false, /not an absolute URL/],
    ['file:///etc/passwd', true, /must be http or https/],
    [`https://example.com/${'a'.repeat(2048)}`, false, /longer than 2048/],
    ['https://192.168.0.10/', false, /private address/],
    ['https://[fe80::1]/', false, /link-local address/],
    ['https://0x7f.1/', false, /127\.0\.0\.1 is a loopback address/],
    ['https://100.64.0.1/', false, /reserved address/],
  ]
  for (const [url, allowPrivate, reason] of refused) {
    t.match(checkWebhookUrl(url, { allowPrivate }), { ok: false, reason }, url)
  }
  const accepted: Array<[string, boolean]> = [
    ['https://example.com/hooks?x=1', false], ['https://93.184.215.14:8443/', false],
    ['https://[2606:4700:4700::1111]/', false], ['http://127.0.0.1:3000/', true], ['https://10.0.0.1/', true],
    ['https://localhost/', false], // a name: judged on what it resolves to
  ]
  for (const [url, allowPrivate] of accepted) {
    const check = checkWebhookUrl(url, { allowPrivate })
    t.ok(check.ok && check.url.href.startsWith(url.slice(0, 12)), url)
  }
})
