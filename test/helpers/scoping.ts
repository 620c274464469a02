/**
 * Which tenant-table references of one SQL statement lack their scoping predicate.
 *
 * Every reference to a tenant table — after FROM, JOIN, UPDATE or USING, under its alias if it has
 * one — needs `<ref>.tenant_id = $n` (`<ref>.id = $n` for the tenants registry) and, for a sharded
 * table read through its parent, `<ref>.shard = $n`. A predicate qualified with the reference's
 * name covers that reference; an unqualified one (`tenant_id = $n`, as raw SQL writes it inside a
 * single-table subquery) covers one reference that has no qualified predicate of its own. So a
 * statement that joins two tenant tables but scopes only one of them is reported, which "some
 * tenant_id = $n appears somewhere" would let through. INSERT targets need none: their tenant comes
 * from the column default and RLS's WITH CHECK.
 */
export interface TableInfo {
  keyColumn: string
  sharded: boolean
}

const NOT_AN_ALIAS = new Set([
  'where', 'join', 'inner', 'left', 'right', 'full', 'cross', 'natural', 'on', 'using', 'set', 'order', 'group',
  'limit', 'offset', 'for', 'returning', 'union', 'except', 'intersect', 'window', 'having', 'lateral', 'values',
  'and', 'or', 'as', 'with', 'select',
])

interface Reference { table: string, ref: string, info: TableInfo, partition: boolean }

const ITEM = '(?:only\\s+)?("?)([a-z_][a-z0-9_]*)\\1(\\s*\\()?(?:\\s+(?:as\\s+)?("?)([a-z_][a-z0-9_]*)\\4)?'

function references (sql: string, tables: ReadonlyMap<string, TableInfo>): Reference[] {
  const found: Reference[] = []
  const add = (m: RegExpExecArray | RegExpMatchArray): void => {
    if (m[3] !== undefined) return // a function call: bind_tenant(...), unnest(...)
    const name = m[2]!.toLowerCase()
    const alias = m[5] !== undefined && !NOT_AN_ALIAS.has(m[5].toLowerCase()) ? m[5] : undefined
    let info = tables.get(name)
    let partition = false
    if (info === undefined) {
      // A sharded table's partition, read directly: the shard is implied, the tenant is not.
      const parent = /^(.+)_s\d+$/.exec(name)?.[1]
      const parentInfo = parent === undefined ? undefined : tables.get(parent)
      if (parentInfo?.sharded === true) { info = parentInfo; partition = true }
    }
    if (info !== undefined) found.push({ table: name, ref: alias ?? name, info, partition })
  }
  for (const m of sql.matchAll(new RegExp(`\\b(?:from|join|update|using)\\s+${ITEM}`, 'gi'))) {
    add(m)
    // FROM a, b: the items that follow the first one, separated by commas.
    const next = new RegExp(`\\s*,\\s*${ITEM}`, 'iy')
    next.lastIndex = m.index! + m[0].length
    for (let more = next.exec(sql); more !== null; more = next.exec(sql)) add(more)
  }
  return found
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

function qualified (sql: string, ref: string, column: string): boolean {
  return new RegExp(`"?${escape(ref)}"?\\s*\\.\\s*"?${column}"?\\s*=\\s*\\$\\d+`, 'i').test(sql)
}

function unqualifiedCount (sql: string, column: string): number {
  return [...sql.matchAll(new RegExp(`(^|[^."\\w])"?${column}"?\\s*=\\s*\\$\\d+`, 'gi'))].length
}

/** Human-readable gaps, empty when every tenant-table reference of the statement is scoped. */
export function scopingGaps (sql: string, tables: ReadonlyMap<string, TableInfo>): string[] {
  const refs = references(sql, tables)
  const gaps: string[] = []
  const needs: Array<{ ref: Reference, column: string }> = []
  for (const ref of refs) {
    needs.push({ ref, column: ref.info.keyColumn })
    if (ref.info.sharded && !ref.partition) needs.push({ ref, column: 'shard' })
  }
  for (const column of new Set(needs.map((n) => n.column))) {
    const uncovered = needs.filter((n) => n.column === column && !qualified(sql, n.ref.ref, column))
    // The registry's key is `id`, which every table has: only a qualified predicate counts for it.
    const spare = column === 'id' ? 0 : unqualifiedCount(sql, column)
    if (uncovered.length > spare) {
      const lack = uncovered.length - spare === 1 ? 'lacks' : 'lack'
      const refs = uncovered.map((n) => n.ref.ref).join(', ')
      gaps.push(`${uncovered.length - spare} of ${refs} ${lack} a ${column} = $n predicate`)
    }
  }
  return gaps
}

/** How many tenant-table references the statement makes (to show the check saw them). */
export function tenantReferences (sql: string, tables: ReadonlyMap<string, TableInfo>): number {
  return references(sql, tables).length
}

/** One scoping value a statement carries: a predicate's bound parameter, or the shard in a partition's name. */
export interface ScopingValue {
  column: 'tenant' | 'shard'
  value: unknown
  /** Where it was found, for messages: `"i"."tenant_id" = $2`, or the partition's name. */
  source: string
}

/**
 * The values a statement is scoped to: the parameter bound to each `tenant_id = $n` (qualified or
 * not) and to each tenants-registry `<ref>.id = $n` (the tenant), the parameter of each `shard = $n`
 * and the shard in the name of each partition read directly (the shard). scopingGaps shows that the
 * predicates exist; these show which tenant and shard they let through.
 */
export function scopingValues (
  sql: string,
  values: readonly unknown[],
  tables: ReadonlyMap<string, TableInfo>
): ScopingValue[] {
  const found: ScopingValue[] = []
  const bound = (column: ScopingValue['column'], pattern: RegExp): void => {
    for (const m of sql.matchAll(pattern)) found.push({ column, value: values[Number(m[2]) - 1], source: m[1]!.trim() })
  }
  bound('tenant', /((?:"?[a-z_][a-z0-9_]*"?\s*\.\s*|(?<![\w".]))"?tenant_id"?\s*=\s*\$(\d+))/gi)
  bound('shard', /((?:"?[a-z_][a-z0-9_]*"?\s*\.\s*|(?<![\w".]))"?shard"?\s*=\s*\$(\d+))/gi)
  for (const ref of references(sql, tables)) {
    if (ref.info.keyColumn === 'id') {
      bound('tenant', new RegExp(`("?${escape(ref.ref)}"?\\s*\\.\\s*"?id"?\\s*=\\s*\\$(\\d+))`, 'gi'))
    }
    if (ref.partition) found.push({ column: 'shard', value: Number(/_s(\d+)$/.exec(ref.table)![1]), source: ref.table })
  }
  return found
}
