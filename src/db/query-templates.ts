import { CompiledQuery, type Compilable, type Kysely } from 'kysely'
import type { DB } from './schema.ts'

/**
 * Queries compiled once and run many times with new values. Building a Kysely query, running the
 * tenant-scoping plugin over it and compiling it to SQL cost about a fifth of the request path's CPU
 * in the benchmark's profile, and for a given query shape and shard the result is always the same
 * SQL: only the parameter values differ. A template is built the first time with placeholder
 * values through the request's own Kysely (so the scoping plugin applies exactly as always), the
 * SQL is kept with a note of which parameter is which argument, which is the tenant, and which are
 * constants, and later runs only fill in the values.
 *
 * Only the tenant routes' Kysely instances have a scope registered (tenant-context); anywhere else
 * (the operator's connections, the benchmark's capture) the query is built and compiled as usual.
 */

export interface TemplateScope {
  tenantId: string
  shard: number
  /** Refuses to run once the request's transaction has ended (see FinishedTransactionGuard). */
  assertOpen: () => void
}

const scopes = new WeakMap<Kysely<DB>, TemplateScope>()

/** Called by the tenant pipeline for the Kysely it hands to a request. */
export function registerScope (db: Kysely<DB>, scope: TemplateScope): void {
  scopes.set(db, scope)
}

type Slot = { arg: number } | { tenant: true } | { value: unknown }

interface Template {
  sql: string
  slots: Slot[]
}

/** Past this many (shape, shard) entries per template, queries are compiled per run. */
const MAX_ENTRIES = 4096

/**
 * A query run from a template. `build` must produce the same SQL for the same shape of arguments
 * (`shape`: which optional arguments are present, by default none are optional) and must pass its
 * arguments to the query as values, never as SQL text — except the arguments listed in `inline`.
 * `placeholders` are values no real argument or query constant takes, one per argument.
 *
 * `inline`: arguments (by index) that `build` writes into the SQL as literals, e.g. a LIMIT. They
 * must be integers (checked here, as nothing else may become SQL text) and are part of the
 * template's key. Why: PostgreSQL keeps a prepared statement's generic plan only when its estimated
 * cost is close to the custom plans', and `LIMIT $n` is estimated as a tenth of the table, so a
 * parameterised LIMIT makes every execution plan the query afresh (custom plans, measured: about
 * as much time planning as running the invoice list). With the LIMIT written in, the generic plan
 * is the custom one and is kept.
 */
export function queryTemplate<A extends unknown[], R> (
  build: (db: Kysely<DB>, ...args: A) => Compilable<R>,
  placeholders: { [K in keyof A]: NonNullable<A[K]> },
  shape: (...args: A) => string = () => '',
  inline: readonly number[] = []
): (db: Kysely<DB>, ...args: A) => Promise<R[]> {
  const templates = new Map<string, Template>()
  return async (db, ...args) => {
    for (const i of inline) {
      if (!Number.isSafeInteger(args[i])) throw new TypeError(`query template: inline argument ${i} must be an integer`)
    }
    const scope = scopes.get(db)
    if (scope === undefined) return (await db.executeQuery(build(db, ...args))).rows
    scope.assertOpen()
    const key = `${shape(...args)}|${inline.map((i) => String(args[i])).join(',')}|${scope.shard}`
    let template = templates.get(key)
    if (template === undefined) {
      // The same shape: an absent optional argument stays absent; an inline one is itself.
      const stand = args.map((a, i) => a === undefined ? undefined : inline.includes(i) ? a : placeholders[i]) as A
      const compiled = build(db, ...stand).compile()
      template = {
        sql: compiled.sql,
        slots: compiled.parameters.map((value): Slot => {
          const arg = stand.findIndex((p) => p !== undefined && p === value)
          if (arg >= 0) return { arg }
          if (value === scope.tenantId) return { tenant: true }
          return { value }
        }),
      }
      if (templates.size < MAX_ENTRIES) templates.set(key, template)
    }
    const values = template.slots
      .map((slot) => 'arg' in slot ? args[slot.arg] : 'tenant' in slot ? scope.tenantId : slot.value)
    return (await db.executeQuery(CompiledQuery.raw(template.sql, values) as CompiledQuery<R>)).rows
  }
}
