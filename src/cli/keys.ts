import { API_HELP, uuidArgument, type Command } from './command.ts'
import { fields, usageError } from './output.ts'
import { connect, tenantIdOf } from './tenants.ts'

const SCOPES = ['read', 'write', 'admin']

/** A key as the operator API issues it (CreatedApiKey). */
interface IssuedKey {
  id: string
  name: string
  scopes: string[]
  prefix: string
  owner_rights: boolean
  key: string
  created_at: string
}

const issue: Command = {
  name: 'keys issue',
  summary: 'Issue an API key for a tenant (printed once: store it now).',
  usage: '<tenant-id|slug> [--name NAME] [--scopes read,write,admin]',
  help: 'For a tenant left without a working admin key: with the admin scope ' +
    '(the default: read, write and admin) the key has owner rights. Recorded in the tenant\'s audit trail. ' +
    'A tenant being erased exits with 4.\n' + API_HELP,
  options: {
    name: { type: 'string', value: 'NAME', description: 'what the key is for (default "operator-issued key")' },
    scopes: { type: 'string', value: 'LIST', description: 'comma-separated: read, write, admin (default all three)' },
  },
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const scopesText = context.string('scopes')
    const scopes = scopesText?.split(',').map((s) => s.trim()).filter((s) => s !== '')
    if (scopes !== undefined) {
      const unknown = scopes.filter((s) => !SCOPES.includes(s))
      if (scopes.length === 0 || unknown.length > 0) {
        throw usageError(`--scopes takes a comma-separated list of ${SCOPES.join(', ')}, ` +
          `got ${JSON.stringify(scopesText)}`)
      }
    }
    const name = context.string('name')
    const api = await connect(context)
    const tenantId = await tenantIdOf(api, context.args[0]!)
    const key = await api.request<IssuedKey>('POST', `/admin/v1/tenants/${tenantId}/api-keys`,
      { ...(name !== undefined && { name }), ...(scopes !== undefined && { scopes: [...new Set(scopes)] }) })
    context.out.result([
      ...fields([
        ['key id', key.id], ['tenant', tenantId], ['name', key.name], ['scopes', key.scopes.join(', ')],
        ['owner rights', key.owner_rights ? 'yes (adds and removes owners, revokes keys with owner rights)' : 'no'],
      ]),
      '',
      'the key, shown this once:',
      key.key,
    ], { ...key, tenant_id: tenantId })
  },
}

const revoke: Command = {
  name: 'keys revoke',
  summary: 'Revoke one of a tenant\'s API keys: it fails with 401 from its next request on.',
  usage: '<tenant-id|slug> <key-id>',
  help: 'The tenant\'s last key with the admin scope is kept (exit 4): issue a ' +
    'replacement first. A key that is not live (unknown, or revoked already) exits with 3. Recorded in the ' +
    'tenant\'s audit trail.\n' + API_HELP,
  args: { min: 2, max: 2 },
  target: 'api',
  run: async (context) => {
    const keyId = uuidArgument(context.args[1], 'the key id')
    const api = await connect(context)
    const tenantId = await tenantIdOf(api, context.args[0]!)
    await api.request('DELETE', `/admin/v1/tenants/${tenantId}/api-keys/${keyId}`)
    context.out.result(`revoked key ${keyId} of tenant ${tenantId}`,
      { revoked: true, tenant_id: tenantId, key_id: keyId })
  },
}

export const keyCommands: Command[] = [issue, revoke]
