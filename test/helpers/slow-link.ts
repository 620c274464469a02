import { connect, createServer, type Socket } from 'node:net'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/**
 * A TCP relay to the database at `url` that holds back everything the server sends by `delayMs`
 * (in order): a slow network path, so that a test can tell "waited for the server's message" from
 * "happened to receive it in time". Returns `url` pointed at the relay; closed at teardown.
 */
export async function slowLink (t: Teardown, url: string, delayMs: number): Promise<string> {
  const target = new URL(url)
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => { client.destroy(); upstream.destroy() })
      socket.on('close', () => { sockets.delete(socket); client.destroy(); upstream.destroy() })
    }
    client.on('data', (chunk) => upstream.write(chunk))
    upstream.on('data', (chunk) => { setTimeout(() => { if (!client.destroyed) client.write(chunk) }, delayMs) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    for (const socket of sockets) socket.destroy()
    server.close(() => { resolve() })
  }))
  const address = server.address()
  const relayed = new URL(url)
  relayed.hostname = '127.0.0.1'
  relayed.port = String(typeof address === 'object' && address !== null ? address.port : 0)
  return relayed.toString()
}
