import t from 'tap'
import { lineFailureLog, logFailure } from '../src/log-failure.ts'

t.test('a best-effort step that fails is logged as one line and goes no further', async (t) => {
  const lines: string[] = []
  const log = lineFailureLog((line) => { lines.push(line) })
  await t.resolves(Promise.reject(new Error('connection lost')).catch(logFailure(log, 'rolling back', { shard: 16 })))
  await Promise.reject(new Error('gone')).catch(logFailure(log, 'closing a connection'))
  t.same(lines, ['rolling back failed (shard=16): connection lost', 'closing a connection failed: gone'])
})
