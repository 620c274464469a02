import { createServer } from 'node:http'
import type { Command } from './command.ts'
import { failureError, usageError } from './output.ts'

const MAX_BODY_BYTES = 1024 * 1024

const listen: Command = {
  name: 'webhooks listen',
  summary: 'Receive webhooks on this machine and check their signatures (development).',
  usage: '[--port 4000] [--secret whsec_...] [--count N]',
  help: 'Listens on 127.0.0.1 and prints a line per webhook POSTed to it: its type, its webhook-id (the event id) ' +
    'and whether its Standard Webhooks signature verifies with --secret (the secret POST /v1/webhook-endpoints ' +
    'returned). Answers 204 when it verifies (or no secret is given), 400 otherwise, so the server records the ' +
    'outcome. Exits after --count webhooks, or on Ctrl-C. The server delivers to 127.0.0.1 only when started with ' +
    'WEBHOOK_ALLOW_PRIVATE_TARGETS=true.',
  options: {
    port: { type: 'string', value: 'PORT', description: 'the port on 127.0.0.1 (default 4000)' },
    secret: { type: 'string', value: 'SECRET', description: 'the endpoint\'s signing secret (whsec_...)' },
    count: { type: 'string', value: 'N', description: 'exit after N webhooks' },
  },
  args: { min: 0, max: 0 },
  target: 'local',
  run: async ({ string, out }) => {
    const port = Number(string('port') ?? '4000')
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw usageError('--port must be a port number')
    const count = string('count') === undefined ? Infinity : Number(string('count'))
    if (count !== Infinity && !(count >= 1 && Number.isInteger(count))) {
      throw usageError('--count must be a positive whole number')
    }
    const secret = string('secret')
    const { verifyWebhook } = await import('../webhooks/signature.ts')
    if (secret !== undefined) {
      try {
        verifyWebhook(secret, {}, '')
      } catch {
        throw usageError('--secret must be a signing secret (whsec_ and base64)')
      }
    }
    let seen = 0
    const lines: string[] = []
    const server = createServer((request, response) => {
      if (request.method !== 'POST') { response.writeHead(405, { allow: 'POST' }).end(); return }
      const chunks: Buffer[] = []
      let size = 0
      request.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > MAX_BODY_BYTES) { request.destroy(); return }
        chunks.push(chunk)
      })
      request.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        const verified = secret === undefined ? undefined : verifyWebhook(secret, request.headers, body)
        let type = '?'
        try {
          type = String((JSON.parse(body) as { type?: unknown }).type ?? '?')
        } catch {
          type = '(not JSON)'
        }
        const id = String(request.headers['webhook-id'] ?? '?')
        const verdict = verified === undefined
          ? 'signature not checked'
          : verified ? 'signature verified' : 'BAD SIGNATURE'
        const line = `${type} ${id} ${verdict}`
        lines.push(line)
        process.stdout.write(out.json ? '' : `${line}\n`)
        response.writeHead(verified === false ? 400 : 204).end()
        if (++seen >= count) response.once('finish', () => { server.close(); server.closeAllConnections() })
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        reject(failureError(`cannot listen on 127.0.0.1:${port}: ${error.code ?? error.message}`))
      })
      server.listen(port, '127.0.0.1', () => {
        out.note(`listening on http://127.0.0.1:${port}`)
        resolve()
      })
    })
    const stop = (): void => { server.close(); server.closeAllConnections() }
    process.once('SIGINT', stop)
    await new Promise((resolve) => server.once('close', resolve))
    process.off('SIGINT', stop)
    if (out.json) out.result([], { webhooks: lines })
  },
}

export const webhookCommands: Command[] = [listen]
