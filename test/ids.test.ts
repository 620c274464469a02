import t from 'tap'
import { newId } from '../src/ids.ts'

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

/** The 48-bit millisecond timestamp and the 32 bits after it that uuid's v7 uses as its counter. */
function parts (id: string): { msecs: bigint, counter: bigint } {
  const hex = id.replaceAll('-', '')
  const value = BigInt(`0x${hex}`)
  const msecs = value >> 80n
  const counter = ((((value >> 64n) & 0xfffn) << 30n) | ((value >> 32n) & 0x3fffffffn)) >> 10n
  return { msecs, counter }
}

t.test('ids are UUIDv7 ordered by their millisecond', async (t) => {
  const before = BigInt(Date.now())
  const ids = Array.from({ length: 2000 }, () => newId())
  const after = BigInt(Date.now())
  t.ok(ids.every((id) => UUID_V7.test(id)), 'every id is a version 7 UUID')
  t.equal(new Set(ids).size, ids.length, 'no id repeats')
  for (const id of ids) {
    const { msecs } = parts(id)
    if (msecs < before || msecs > after) t.fail(`${id} carries a time outside the call`)
  }
  const times = ids.map((id) => parts(id).msecs)
  t.ok(times.every((m, i) => i === 0 || m >= times[i - 1]!), 'the timestamps never go back')
})

t.test('two ids taken in the same millisecond do not count the ids taken between them', async (t) => {
  // With one counter per process (uuid's own v7), ids of one millisecond differ by exactly the
  // number of ids drawn in between: a tenant holding two of them learns others' volume.
  const ids = Array.from({ length: 5000 }, () => parts(newId()))
  let sameMs = 0
  let consecutive = 0
  for (let i = 1; i < ids.length; i++) {
    if (ids[i]!.msecs !== ids[i - 1]!.msecs) continue
    sameMs++
    const step = ids[i]!.counter - ids[i - 1]!.counter
    if (step >= 1n && step <= 2n) consecutive++
  }
  t.ok(sameMs > 100, `enough pairs fall in one millisecond to judge (${sameMs})`)
  t.ok(consecutive <= sameMs / 100,
    `the bits after the timestamp are not a counter (${consecutive} of ${sameMs} pairs step by 1 or 2)`)
})
