import t from 'tap'
import { generateSigningSecret, webhookHeaders } from '../../src/webhooks/signature.ts'
import { runCli } from '../helpers/cli.ts'
import { freePort } from '../helpers/net.ts'

// `rowfence webhooks listen` as a developer runs it: a real process, real POSTs.
t.test('webhooks listen prints each webhook with its verdict, answers 400 to a bad signature, and exits', async (t) => {
  const secret = generateSigningSecret()
  const port = await freePort()
  const listening = runCli(['webhooks', 'listen', '--port', String(port), '--secret', secret, '--count', '2'], {})
  const url = `http://127.0.0.1:${port}/hooks`
  const deadline = Date.now() + 30_000
  for (;;) {
    const ready = await fetch(url).then((r) => r.status === 405, () => false)
    if (ready) break
    if (Date.now() > deadline) throw new Error('the listener did not start')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const body = JSON.stringify({ type: 'customer.created', data: {} })
  const now = Math.floor(Date.now() / 1000)
  const good = await fetch(url, { method: 'POST', body, headers: webhookHeaders([secret], 'evt-1', now, body) })
  t.equal(good.status, 204, 'a signed webhook is accepted')
  const forged = await fetch(url, {
    method: 'POST', body, headers: webhookHeaders([generateSigningSecret()], 'evt-2', now, body),
  })
  t.equal(forged.status, 400, 'one signed with another secret is refused')
  const run = await listening
  t.equal(run.code, 0, run.stderr)
  t.same(run.stdout.trim().split('\n'), [
    'customer.created evt-1 signature verified',
    'customer.created evt-2 BAD SIGNATURE',
  ])
})

t.test('webhooks listen refuses a malformed secret and a bad port with usage errors', async (t) => {
  const badSecret = await runCli(['webhooks', 'listen', '--secret', 'not-a-secret!'], {})
  t.equal(badSecret.code, 2)
  t.match(badSecret.stderr, /--secret must be a signing secret/)
  const badPort = await runCli(['webhooks', 'listen', '--port', '70000'], {})
  t.equal(badPort.code, 2)
  t.match(badPort.stderr, /--port must be a port number/)
})
