import t from 'tap'
import { inSendOrder } from '../../src/db/in-send-order.ts'

const later = async <T>(ms: number, outcome: () => T): Promise<T> => {
  await new Promise((resolve) => setTimeout(resolve, ms))
  return outcome()
}

t.test('the first statement\'s failure is reported even when its echo settles first', async (t) => {
  const cause = new Error('no partition of relation "audit_events" found for row')
  const echo = new Error('current transaction is aborted, commands ignored until end of transaction block')
  const first = later(30, () => { throw cause })
  const second = later(1, () => { throw echo })
  await t.rejects(inSendOrder(first, second), cause)
})

t.test('a failure of the second alone is reported; both values otherwise', async (t) => {
  const failed = new Error('second failed')
  await t.rejects(inSendOrder(later(1, () => 1), later(5, () => { throw failed })), failed)
  t.same(await inSendOrder(later(5, () => 'a'), later(1, () => 2)), ['a', 2])
})
