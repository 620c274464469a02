import { randomFillSync } from 'node:crypto'
import { v7 as uuidv7 } from 'uuid'

/**
 * A new UUIDv7 for a row the server creates: the millisecond timestamp, then 74 random bits.
 *
 * uuid's own v7() keeps one counter per process and adds 1 to it within a millisecond, so a tenant that
 * got two ids in the same millisecond could read from them how many ids other tenants got in between.
 * Here every id draws its counter bits afresh (uuid's stateless path: explicit random bytes and seq):
 * ids still sort by time across milliseconds, and say nothing about anyone else's.
 */
export function newId (): string {
  const random = randomFillSync(new Uint8Array(16))
  const seq = ((random[6]! & 0x7f) << 24) | (random[7]! << 16) | (random[8]! << 8) | random[9]!
  return uuidv7({ random, seq, msecs: Date.now() })
}
