import type { OperatorApi } from './api.ts'
import { API_HELP, isUuid, uuidArgument, type Command, type RunContext } from './command.ts'
import { fields, table, usageError } from './output.ts'

/** The operator API, its module loaded when a command runs: --help and usage errors answer without it. */
export const connect = async (context: RunContext): Promise<OperatorApi> =>
  (await import('./target.ts')).operatorApi(context)

/** A tenant as the operator API returns it. */
export interface Tenant {
  id: string
  name: string
  slug: string
  placement: string
  status: string
  created_at: string
}

interface Receipt {
  id: string
  tenant_id: string
  slug: string
  placement: string
  requested_by: string
  started_at: string
  finished_at: string
  rows_removed: Record<string, number>
  partitions_dropped: boolean
  verified: boolean
}

const placementArgument = (value: string | undefined): string => {
  if (value !== 'pooled' && value !== 'dedicated') {
    throw usageError(`the placement must be pooled or dedicated, got ${JSON.stringify(value ?? '')}`)
  }
  return value
}

/** The tenant a reference names: its id (a UUID) as given, else its slug, looked up. */
export async function tenantIdOf (api: OperatorApi, reference: string): Promise<string> {
  if (isUuid(reference)) return reference.toLowerCase()
  return (await tenantByReference(api, reference)).id
}

async function tenantByReference (api: OperatorApi, reference: string): Promise<Tenant> {
  if (isUuid(reference)) return api.request<Tenant>('GET', `/admin/v1/tenants/${reference.toLowerCase()}`)
  return api.request<Tenant>('GET', `/admin/v1/tenant-slugs/${encodeURIComponent(reference)}`)
}

const tenantLines = (tenant: Tenant): string[] => fields([
  ['id', tenant.id], ['name', tenant.name], ['slug', tenant.slug], ['placement', tenant.placement],
  ['status', tenant.status], ['created', tenant.created_at],
])

const receiptLines = (receipt: Receipt): string[] => fields([
  ['receipt', receipt.id],
  ['tenant', `${receipt.tenant_id} (${receipt.slug}, ${receipt.placement})`],
  ['requested by', receipt.requested_by],
  ['started', receipt.started_at],
  ['finished', receipt.finished_at],
  ['rows removed', Object.entries(receipt.rows_removed).map(([t, n]) => `${t} ${n}`).join(', ') || 'none'],
  ['verified', receipt.verified ? 'yes: no table holds a row of the tenant' : 'NO'],
  ['partitions dropped', receipt.partitions_dropped ? 'yes' : 'no (pooled, or left for the next sweep)'],
])

const create: Command = {
  name: 'tenants create',
  summary: 'Create a tenant and its first admin API key (printed once: store it now).',
  usage: '--name NAME --slug SLUG [--placement pooled|dedicated]',
  help: 'A slug already taken exits with 4.\n' + API_HELP,
  options: {
    name: { type: 'string', value: 'NAME', description: 'the tenant\'s name' },
    slug: { type: 'string', value: 'SLUG', description: 'lowercase letters, digits and dashes; 2 to 63 characters' },
    placement: { type: 'string', value: 'pooled|dedicated', description: 'default pooled' },
  },
  args: { min: 0, max: 0 },
  target: 'api',
  run: async (context) => {
    const name = context.string('name')
    const slug = context.string('slug')
    if (name === undefined || slug === undefined) throw usageError('--name and --slug are required')
    const placement = context.string('placement')
    const body = { name, slug, ...(placement !== undefined && { placement: placementArgument(placement) }) }
    const api = await connect(context)
    const created = await api.request<{ tenant: Tenant, api_key: { id: string, key: string, scopes: string[] } }>(
      'POST', '/admin/v1/tenants', body)
    context.out.result([
      ...tenantLines(created.tenant),
      '',
      `owner API key ${created.api_key.id} (${created.api_key.scopes.join(', ')}), shown this once:`,
      created.api_key.key,
    ], created)
  },
}

const list: Command = {
  name: 'tenants list',
  summary: 'List every tenant, newest first.',
  usage: '',
  help: API_HELP,
  args: { min: 0, max: 0 },
  target: 'api',
  run: async (context) => {
    const api = await connect(context)
    const tenants = await api.all<Tenant>('/admin/v1/tenants')
    context.out.result(tenants.length === 0
      ? ['no tenants']
      : table(['ID', 'SLUG', 'PLACEMENT', 'STATUS', 'CREATED', 'NAME'],
        tenants.map((t) => [t.id, t.slug, t.placement, t.status, t.created_at, t.name])),
    tenants)
  },
}

const show: Command = {
  name: 'tenants show',
  summary: 'Show one tenant, by id or slug.',
  usage: '<id|slug>',
  help: API_HELP,
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const api = await connect(context)
    const tenant = await tenantByReference(api, context.args[0]!)
    context.out.result(tenantLines(tenant), tenant)
  },
}

const placement: Command = {
  name: 'tenants placement',
  summary: 'Move a tenant between a pooled shard and partitions of its own.',
  usage: '<id|slug> <pooled|dedicated>',
  help: 'Its requests wait while the rows move, then go on; other tenants are not held up. A tenant busy with ' +
    'another move or an erasure exits with 4.\n' + API_HELP,
  args: { min: 2, max: 2 },
  target: 'api',
  run: async (context) => {
    const target = placementArgument(context.args[1])
    const api = await connect(context)
    const id = await tenantIdOf(api, context.args[0]!)
    const moved = await api.request<{ tenant: Tenant, rows_moved: Record<string, number> }>(
      'PUT', `/admin/v1/tenants/${id}/placement`, { placement: target })
    const rows = Object.values(moved.rows_moved).reduce((sum, n) => sum + n, 0)
    context.out.result([...tenantLines(moved.tenant), `rows moved: ${rows}`], moved)
  },
}

const erase: Command = {
  name: 'tenants erase',
  summary: 'Erase a tenant and every row it owns, for good, and print the erasure receipt.',
  usage: '<id|slug> --yes',
  help: 'Revokes its credentials first, removes every row, verifies from the catalog that nothing is left and ' +
    'keeps a receipt (see tenants receipts). Without --yes nothing happens (exit 2). A tenant busy with a ' +
    'placement move exits with 4.\n' + API_HELP,
  options: { yes: { type: 'boolean', description: 'confirm: the tenant\'s data cannot be recovered' } },
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const reference = context.args[0]!
    if (!context.flag('yes')) {
      throw usageError(`erasing ${reference} removes all its data for good: add --yes to confirm`)
    }
    const api = await connect(context)
    const id = await tenantIdOf(api, reference)
    const receipt = await api.request<Receipt>('DELETE', `/admin/v1/tenants/${id}`)
    context.out.result([`erased tenant ${receipt.tenant_id} (${receipt.slug})`, ...receiptLines(receipt)], receipt)
  },
}

const receipts: Command = {
  name: 'tenants receipts',
  summary: 'List erasure receipts, the latest first: of every erased tenant, or of one.',
  usage: '[<tenant-id>]',
  help: API_HELP,
  args: { min: 0, max: 1 },
  target: 'api',
  run: async (context) => {
    const tenantId = context.args[0] === undefined ? undefined : uuidArgument(context.args[0], 'the tenant id')
    const api = await connect(context)
    const query: Record<string, string> = tenantId === undefined ? {} : { tenant_id: tenantId }
    const found = await api.all<Receipt>('/admin/v1/erasure-receipts', query)
    const lines = found.length === 0
      ? [tenantId === undefined ? 'no erasure receipts' : `no erasure receipt for tenant ${tenantId}`]
      : found.flatMap((receipt, i) => [...(i > 0 ? [''] : []), ...receiptLines(receipt)])
    context.out.result(lines, found)
  },
}

export const tenantCommands: Command[] = [create, list, show, placement, erase, receipts]
