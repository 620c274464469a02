import type { LimitName } from '../limits/limits.ts'
import type { OperatorApi } from './api.ts'
import { API_HELP, type Command } from './command.ts'
import { CliError, EXIT, fields, notFoundError, table, usageError } from './output.ts'
import { connect, tenantIdOf } from './tenants.ts'

/**
 * The limits, for the help and for checking names before anything is sent. Typed by the server's
 * LIMIT_NAMES, so that the compiler keeps the two in step, without loading the server's modules.
 */
const LIMIT_HELP: Record<LimitName, string> = {
  requests_per_second: 'requests per second, sustained',
  burst: 'requests in any one second',
  concurrent_requests: 'database connections at once, per instance',
  invoices_created: 'invoices per billing period',
  customers: 'customers',
  api_keys: 'live API keys',
  members: 'members',
  webhook_endpoints: 'webhook endpoints',
  events_delivered: 'webhook deliveries per billing period',
  export_bytes: 'bytes of the tenant\'s own exports per billing period',
}
const LIMIT_NAMES = Object.keys(LIMIT_HELP) as LimitName[]
const MAX_VALUE = 1e15
const PLAN_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/

/** Some limits, as a plan or a tenant's overrides hold them: a name absent falls to the next layer. */
type SomeLimits = Partial<Record<LimitName, number | null>>
/** A limit's value as given: a number, null (unlimited) or undefined (`default`: none of its own). */
type LimitValue = number | null | undefined

interface Plan {
  name: string
  limits: SomeLimits
  tenants: number
  created_at: string
  updated_at: string
}

interface TenantLimits {
  plan: string | null
  overrides: SomeLimits
  effective: Record<LimitName, number | null>
  updated_at: string | null
}

const isLimitName = (name: string): name is LimitName => Object.hasOwn(LIMIT_HELP, name)

/**
 * The name=value pairs of a repeatable option (each value may hold several, comma-separated). A value is a
 * whole number or `unlimited` (null); with `allowDefault`, `default` too (undefined: no value of its own).
 */
function limitPairs (option: string, given: string[], allowDefault: boolean): Map<LimitName, LimitValue> {
  const pairs = new Map<LimitName, LimitValue>()
  const values = allowDefault ? 'a whole number, unlimited or default' : 'a whole number or unlimited'
  for (const item of given.flatMap((value) => value.split(',')).map((s) => s.trim()).filter((s) => s !== '')) {
    const at = item.indexOf('=')
    if (at < 0) throw usageError(`--${option} takes NAME=VALUE, got ${JSON.stringify(item)}`)
    const name = item.slice(0, at).trim()
    const value = item.slice(at + 1).trim()
    if (!isLimitName(name)) {
      throw usageError(`unknown limit ${JSON.stringify(name)}: the limits are ${LIMIT_NAMES.join(', ')}`)
    }
    if (pairs.has(name)) throw usageError(`--${option} names ${name} twice`)
    if (value === 'unlimited') pairs.set(name, null)
    else if (allowDefault && value === 'default') pairs.set(name, undefined)
    else if (value === 'default') throw usageError(`--${option} ${name}=default: leave ${name} out for the default`)
    else if (/^[0-9]+$/.test(value) && Number(value) <= MAX_VALUE) pairs.set(name, Number(value))
    else throw usageError(`--${option} ${name}: the value must be ${values} (at most 10^15), got "${value}"`)
  }
  return pairs
}

function planName (value: string): string {
  if (!PLAN_NAME.test(value)) {
    throw usageError('a plan name is 1 to 63 lowercase letters, digits, - and _ (starting with a letter or digit), ' +
      `got ${JSON.stringify(value)}`)
  }
  return value
}

const shown = (value: number | null): string => (value === null ? 'unlimited' : String(value))

/** `name=value, ...` in the order of LIMIT_NAMES, or `none`. */
const limitList = (limits: SomeLimits, none: string): string => LIMIT_NAMES
  .filter((name) => limits[name] !== undefined)
  .map((name) => `${name}=${shown(limits[name]!)}`)
  .join(', ') || none

/**
 * The tenant's plan as it is here, or undefined when no plan has its name (a tenant imported from a
 * deployment with plans this one lacks: the server's defaults apply to it).
 */
async function planIfAny (api: OperatorApi, name: string | null): Promise<Plan | undefined> {
  if (name === null) return undefined
  try {
    return await findPlan(api, name)
  } catch (error) {
    if (error instanceof CliError && error.exitCode === EXIT.notFound) return undefined
    throw error
  }
}

/** The plan, or a not-found error that says where the plans are listed. */
async function findPlan (api: OperatorApi, name: string): Promise<Plan> {
  try {
    return await api.request<Plan>('GET', `/admin/v1/plans/${encodeURIComponent(name)}`)
  } catch (error) {
    if (error instanceof CliError && error.exitCode === EXIT.notFound) {
      throw notFoundError(`no plan named ${name} (rowfence plans list shows them)`)
    }
    throw error
  }
}

/** A tenant's limits: plan, overrides, then every limit in force and where its value comes from. */
function tenantLimitLines (tenantId: string, limits: TenantLimits, plan: Plan | undefined): string[] {
  const source = (name: LimitName): string => {
    if (limits.overrides[name] !== undefined) return 'override'
    if (plan?.limits[name] !== undefined) return `plan ${plan.name}`
    return 'default'
  }
  return [
    ...fields([
      ['tenant', tenantId],
      ['plan', limits.plan === null
        ? 'none (the server\'s defaults)'
        : plan === undefined ? `${limits.plan} (no such plan here: the server's defaults apply)` : limits.plan],
      ['overrides', limitList(limits.overrides, 'none')],
      ['changed', limits.updated_at ?? 'never'],
    ]),
    '',
    ...table(['LIMIT', 'IN FORCE', 'FROM'],
      LIMIT_NAMES.map((name) => [name, shown(limits.effective[name]), source(name)])),
  ]
}

const NAMES_HELP = `The limits: ${LIMIT_NAMES.join(', ')}.`

const planList: Command = {
  name: 'plans list',
  summary: 'List the plans: their limits, and how many tenants are on each.',
  usage: '',
  help: 'A limit a plan does not set is the server\'s default (its LIMIT_* variable).\n' + API_HELP,
  args: { min: 0, max: 0 },
  target: 'api',
  run: async (context) => {
    const api = await connect(context)
    const { data } = await api.request<{ data: Plan[] }>('GET', '/admin/v1/plans')
    context.out.result(data.length === 0
      ? ['no plans']
      : table(['PLAN', 'TENANTS', 'UPDATED', 'LIMITS'],
        data.map((p) => [p.name, String(p.tenants), p.updated_at, limitList(p.limits, 'the server\'s defaults')])),
    data)
  },
}

const planSet: Command = {
  name: 'plans set',
  summary: 'Create a plan, or replace its limits.',
  usage: '<name> --limit NAME=VALUE [--limit NAME=VALUE ...]',
  help: 'The limits given REPLACE the plan\'s whole set: a limit not given falls to the server\'s default, so to ' +
    'change one limit of a plan give the others again (plans list shows them). VALUE is a whole number, or ' +
    'unlimited. Tenants on the plan get the new limits from their next request. ' + NAMES_HELP + '\n' + API_HELP,
  options: {
    limit: {
      type: 'string',
      multiple: true,
      value: 'NAME=VALUE',
      description: 'a limit of the plan; several may be given comma-separated',
    },
  },
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const name = planName(context.args[0]!)
    const limits = Object.fromEntries(limitPairs('limit', context.strings('limit'), false))
    if (Object.keys(limits).length === 0) {
      throw usageError('give the plan\'s limits: --limit NAME=VALUE, once per limit (they replace its whole set)')
    }
    const api = await connect(context)
    const plan = await api.request<Plan>('PUT', `/admin/v1/plans/${name}`, { limits })
    context.out.result([
      `plan ${plan.name} (${plan.tenants} tenant${plan.tenants === 1 ? '' : 's'} on it): ` +
      `${limitList(plan.limits, 'the server\'s defaults')}; the rest are the server's defaults`,
    ], plan)
  },
}

const planDelete: Command = {
  name: 'plans delete',
  summary: 'Delete a plan no tenant is on.',
  usage: '<name>',
  help: 'A plan tenants are on is kept (exit 4): move them first (limits set <tenant> --plan OTHER, or --no-plan). ' +
    'A plan that does not exist exits with 3.\n' + API_HELP,
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const name = planName(context.args[0]!)
    const api = await connect(context)
    await api.request('DELETE', `/admin/v1/plans/${name}`)
    context.out.result(`deleted plan ${name}`, { deleted: true, plan: name })
  },
}

const limitsShow: Command = {
  name: 'limits show',
  summary: 'Show a tenant\'s plan, its overrides and the limits in force.',
  usage: '<tenant-id|slug>',
  help: 'Each limit in force comes from the tenant\'s override, else its plan, else the server\'s default ' +
    '(FROM says which).\n' + API_HELP,
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const api = await connect(context)
    const tenantId = await tenantIdOf(api, context.args[0]!)
    const limits = await api.request<TenantLimits>('GET', `/admin/v1/tenants/${tenantId}/limits`)
    const plan = await planIfAny(api, limits.plan)
    context.out.result(tenantLimitLines(tenantId, limits, plan), { tenant_id: tenantId, ...limits })
  },
}

const limitsSet: Command = {
  name: 'limits set',
  summary: 'Change a tenant\'s plan or overrides, keeping what is not named.',
  usage: '<tenant-id|slug> [--plan NAME | --no-plan] [--override NAME=VALUE ...] [--clear-overrides]',
  help: 'Reads the tenant\'s plan and overrides, changes only what the options ask, and puts them back. ' +
    'Without --plan or --no-plan the plan stays. An override wins over the plan: --override NAME=VALUE sets one ' +
    '(VALUE a whole number or unlimited), NAME=default removes it (the plan\'s value, or the server\'s default, ' +
    'applies again); the other overrides stay, unless --clear-overrides removes them all first. A plan that does ' +
    'not exist exits with 3. Applies from the tenant\'s next request; recorded in its audit trail. ' +
    NAMES_HELP + '\n' + API_HELP,
  options: {
    plan: { type: 'string', value: 'NAME', description: 'put the tenant on this plan' },
    'no-plan': { type: 'boolean', description: 'take the tenant off its plan: the server\'s defaults apply' },
    override: {
      type: 'string',
      multiple: true,
      value: 'NAME=VALUE',
      description: 'set an override to a number or unlimited, or remove it with NAME=default',
    },
    'clear-overrides': { type: 'boolean', description: 'remove every override (before any --override)' },
  },
  args: { min: 1, max: 1 },
  target: 'api',
  run: async (context) => {
    const given = context.string('plan')
    const noPlan = context.flag('no-plan')
    if (given !== undefined && noPlan) throw usageError('give --plan NAME or --no-plan, not both')
    const newPlan = given === undefined ? undefined : planName(given)
    const changes = limitPairs('override', context.strings('override'), true)
    const clear = context.flag('clear-overrides')
    if (newPlan === undefined && !noPlan && changes.size === 0 && !clear) {
      throw usageError('nothing to change: give --plan, --no-plan, --override or --clear-overrides ' +
        '(limits show prints the current ones)')
    }
    const api = await connect(context)
    const tenantId = await tenantIdOf(api, context.args[0]!)
    // Checked first, for a clear "not found" (the server answers 422 for an unknown plan).
    if (newPlan !== undefined) await findPlan(api, newPlan)
    const path = `/admin/v1/tenants/${tenantId}/limits`
    const current = await api.request<TenantLimits>('GET', path)
    const overrides: SomeLimits = clear ? {} : { ...current.overrides }
    for (const [name, value] of changes) {
      if (value === undefined) delete overrides[name]
      else overrides[name] = value
    }
    const plan = noPlan ? null : newPlan ?? current.plan
    const changed = await api.request<TenantLimits>('PUT', path, { plan, overrides })
    const planLimits = await planIfAny(api, changed.plan)
    context.out.result(tenantLimitLines(tenantId, changed, planLimits), { tenant_id: tenantId, ...changed })
  },
}

export const limitCommands: Command[] = [planList, planSet, planDelete, limitsShow, limitsSet]
