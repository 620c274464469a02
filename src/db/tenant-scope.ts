import {
  AliasNode, AndNode, BinaryOperationNode, ColumnNode, FromNode, IdentifierNode, JoinNode, OperationNodeTransformer,
  OperatorNode, ParensNode, ReferenceNode, TableNode, ValueNode, WhereNode,
  type DeleteQueryNode, type KyselyPlugin, type OperationNode, type PluginTransformQueryArgs,
  type PluginTransformResultArgs, type QueryId, type QueryResult, type RootOperationNode, type SelectQueryNode,
  type UnknownRow, type UpdateQueryNode,
} from 'kysely'
import type pg from 'pg'

/**
 * Automatic tenant scoping, as defence in depth on top of RLS: every table reference of a tenant
 * table in a query built with Kysely (FROM, JOIN, UPDATE, DELETE ... USING, and every subquery)
 * gets an explicit `tenant_id = <tenant>` predicate, and `shard = <shard>` for sharded tables.
 * The values are bound parameters of the statement, so PostgreSQL prunes partitions while planning
 * (a policy on a STABLE function alone prunes only at executor start, after planning every
 * partition). A handler that forgets its WHERE clause is still scoped twice: here and by RLS.
 *
 * Raw `sql` fragments are opaque to the plugin: the few raw queries of the code base carry their
 * own tenant predicates, and a test checks every statement the API sends.
 */

export interface TenantTable {
  /** The column that holds the tenant id (`id` for the tenants registry itself). */
  keyColumn: string
  /** Partitioned by shard: also gets `shard = <shard>`. */
  sharded: boolean
}

export type TenantTables = ReadonlyMap<string, TenantTable>

/** Tenant tables as the catalog declares them: every table with a tenant_id column, plus tenants. */
export async function loadTenantTables (pool: pg.Pool): Promise<TenantTables> {
  const { rows } = await pool.query<{ name: string, key_column: string, sharded: boolean }>(`
    SELECT c.relname AS name,
           CASE WHEN c.relname = 'tenants' THEN 'id' ELSE 'tenant_id' END AS key_column,
           EXISTS (SELECT 1 FROM pg_partitioned_table pt JOIN pg_attribute a
                     ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
                    WHERE pt.partrelid = c.oid AND a.attname = 'shard') AS sharded
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND (c.relname = 'tenants' OR EXISTS (SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped))`)
  return new Map(rows.map((r) => [r.name, { keyColumn: r.key_column, sharded: r.sharded }]))
}

/** The partition of a sharded table that holds one shard (named so by sql's create_shard_partitions). */
export function partitionName (table: string, shard: number): string {
  return `${table}_s${shard}`
}

export interface Scope {
  tenantId: string
  shard: number
}

function equals (table: string, column: string, value: unknown): OperationNode {
  return BinaryOperationNode.create(
    ReferenceNode.create(ColumnNode.create(column), TableNode.create(table)),
    OperatorNode.create('='),
    ValueNode.create(value)
  )
}

class ScopeTransformer extends OperationNodeTransformer {
  readonly #tables: TenantTables
  readonly #scope: Scope
  readonly #leafReads: boolean

  constructor (tables: TenantTables, scope: Scope, leafReads: boolean) {
    super()
    this.#tables = tables
    this.#scope = scope
    this.#leafReads = leafReads
  }

  /** The tenant table a FROM/JOIN item names, with the name the query refers to it by. */
  #reference (item: OperationNode): { table: string, refName: string, info: TenantTable } | undefined {
    let table: TableNode | undefined
    let refName: string | undefined
    if (TableNode.is(item)) {
      table = item
      refName = item.table.identifier.name
    } else if (AliasNode.is(item) && TableNode.is(item.node) && IdentifierNode.is(item.alias)) {
      table = item.node
      refName = item.alias.name
    }
    if (table === undefined || refName === undefined || table.table.schema !== undefined) return undefined
    const info = this.#tables.get(table.table.identifier.name)
    return info === undefined ? undefined : { table: table.table.identifier.name, refName, info }
  }

  /** The scoping predicate for one FROM/JOIN item, or undefined when it is not a tenant table. */
  #predicate (item: OperationNode): OperationNode | undefined {
    const ref = this.#reference(item)
    if (ref === undefined) return undefined
    const tenant = equals(ref.refName, ref.info.keyColumn, this.#scope.tenantId)
    return ref.info.sharded ? AndNode.create(tenant, equals(ref.refName, 'shard', this.#scope.shard)) : tenant
  }

  /**
   * A sharded table read by a SELECT becomes its partition for the tenant's shard, under the name
   * the query uses: PostgreSQL then plans one plain table instead of pruning a partitioned one on
   * every execution, and a prepared statement's generic plan (chosen after a few runs) references
   * that one partition only, where a generic plan of the parent would lock every partition each
   * time it runs. The partition has the same RLS policy as its parent.
   */
  #leaf (item: OperationNode): OperationNode {
    if (!this.#leafReads) return item
    const ref = this.#reference(item)
    if (ref === undefined || !ref.info.sharded) return item
    const partition = TableNode.create(partitionName(ref.table, this.#scope.shard))
    return AliasNode.create(partition, IdentifierNode.create(ref.refName))
  }

  #where<T extends { where?: WhereNode }> (node: T, items: ReadonlyArray<OperationNode>): T {
    let where = node.where?.where
    for (const item of items) {
      const predicate = this.#predicate(item)
      if (predicate === undefined) continue
      where = where === undefined ? predicate : AndNode.create(ParensNode.create(where), predicate)
    }
    return where === undefined ? node : { ...node, where: WhereNode.create(where) }
  }

  #joins (joins: ReadonlyArray<JoinNode> | undefined): ReadonlyArray<JoinNode> | undefined {
    return joins?.map((join) => {
      const predicate = this.#predicate(join.table)
      if (predicate === undefined) return join
      // In the ON clause, so that an outer join keeps its meaning.
      return join.on === undefined
        ? JoinNode.createWithOn(join.joinType, join.table, predicate)
        : JoinNode.cloneWithOn(join, predicate)
    })
  }

  protected override transformSelectQuery (node: SelectQueryNode, queryId?: QueryId): SelectQueryNode {
    const inner = super.transformSelectQuery(node, queryId)
    const scoped = this.#where(inner, inner.from?.froms ?? [])
    // A locking read (FOR UPDATE, FOR SHARE) needs UPDATE rights on what it names: it stays on the
    // parent, which the runtime role may update.
    if (scoped.endModifiers !== undefined && scoped.endModifiers.length > 0) {
      return { ...scoped, joins: this.#joins(scoped.joins) }
    }
    const joins = this.#joins(scoped.joins)?.map((join) => ({ ...join, table: this.#leaf(join.table) }))
    return {
      ...scoped,
      ...(scoped.from !== undefined && { from: FromNode.create(scoped.from.froms.map((f) => this.#leaf(f))) }),
      joins,
    }
  }

  protected override transformUpdateQuery (node: UpdateQueryNode, queryId?: QueryId): UpdateQueryNode {
    const inner = super.transformUpdateQuery(node, queryId)
    const items = [...(inner.table !== undefined ? [inner.table] : []), ...(inner.from?.froms ?? [])]
    const scoped = this.#where(inner, items)
    return { ...scoped, joins: this.#joins(scoped.joins) }
  }

  protected override transformDeleteQuery (node: DeleteQueryNode, queryId?: QueryId): DeleteQueryNode {
    const inner = super.transformDeleteQuery(node, queryId)
    const scoped = this.#where(inner, [...inner.from.froms, ...(inner.using?.tables ?? [])])
    return { ...scoped, joins: this.#joins(scoped.joins) }
  }
}

export class TenantScopePlugin implements KyselyPlugin {
  readonly #transformer: ScopeTransformer

  /** leafReads: SELECTs read the tenant's partition of a sharded table directly (see #leaf). */
  constructor (tables: TenantTables, scope: Scope, options: { leafReads?: boolean } = {}) {
    this.#transformer = new ScopeTransformer(tables, scope, options.leafReads ?? true)
  }

  transformQuery (args: PluginTransformQueryArgs): RootOperationNode {
    return this.#transformer.transformNode(args.node, args.queryId)
  }

  async transformResult (args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result
  }
}
