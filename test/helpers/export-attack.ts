import { formatApiKey, type NewApiKey } from '../../src/auth/api-keys.ts'
import { newId } from '../../src/ids.ts'

/**
 * The outside review's attack on an export, as lines: the chain head dropped, an audit event edited,
 * and an api_keys row planted with a secret the attacker knows, owner rights and every scope (right
 * after the tenant's first key). The trailer, if any, is left as it was.
 */
export function reviewAttack (lines: string[], tenantId: string): { attacked: string[], planted: NewApiKey } {
  const keyLine = lines.find((l) => l.startsWith('{"table":"api_keys"'))!
  const { row } = JSON.parse(keyLine) as { row: Record<string, unknown> }
  const planted = formatApiKey(newId(), tenantId, Buffer.alloc(32, 7))
  const secretHash = `\\x${planted.secretHash.toString('hex')}`
  const plantedLine = JSON.stringify({
    table: 'api_keys',
    row: { ...row, id: planted.id, name: 'x', prefix: planted.prefix, secret_hash: secretHash, owner_rights: true },
  })
  const attacked = lines
    .filter((l) => !l.startsWith('{"table":"audit_heads"'))
    .map((l) => l.replace(/"action":"customer\.created"/, '"action":"customer.deleted"'))
    .flatMap((l) => l === keyLine ? [l, plantedLine] : [l])
  return { attacked, planted }
}
