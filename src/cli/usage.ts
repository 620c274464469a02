import { once } from 'node:events'
import { API_HELP, type Command, type RunContext } from './command.ts'
import { openOutput } from './data.ts'
import { failureError, table, usageError } from './output.ts'
import { countProgress } from './progress.ts'
import { connect } from './tenants.ts'

// Usage across tenants (the operator API's /admin/v1/usage): apart from the plan and limit commands, as
// a download (the billing export) is apart from a setting.

const PERIOD = /^[0-9]{4}-(0[1-9]|1[0-2])$/

const periodOption = {
  type: 'string', value: 'YYYY-MM', description: 'the billing period, a UTC month (default: the current one)',
} as const

/** --period, checked; undefined leaves it to the server (its current month). */
function period (context: RunContext): string | undefined {
  const value = context.string('period')
  if (value !== undefined && !PERIOD.test(value)) {
    throw usageError(`--period must be a month, YYYY-MM (2025-01), got ${JSON.stringify(value)}`)
  }
  return value
}

const periodText = (value: string | undefined): string => value ?? 'the current period'

/** Lines completed in a chunk of the download: one per tenant (after CSV's header). */
function newlines (chunk: Buffer): number {
  let count = 0
  for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) count++
  return count
}

const writeFailure = (file: string | undefined, error: NodeJS.ErrnoException): Error =>
  failureError(`cannot write ${file ?? 'stdout'}: ${error.code ?? error.message}`)

const usageExport: Command = {
  name: 'usage export',
  summary: 'Download every tenant\'s usage totals for a billing period, as NDJSON or CSV (stdout, or --out FILE).',
  usage: '[--period YYYY-MM] [--format ndjson|csv] [--out FILE]',
  help: 'One line per tenant (every tenant, 0 for what it did not use) with the period\'s counters: the quotas ' +
    'counted per period (invoices_created, events_delivered, export_bytes), invoices_finalized, requests and the ' +
    'refusals. Streamed in constant memory; a count of tenants goes to stderr on a long download. With --out the ' +
    'file is written under a temporary name and renamed once complete: a failed download leaves no file. The ' +
    'summary goes to stderr; --json (which needs --out: stdout carries the export otherwise) prints it as a ' +
    'document on stdout. Request counts of the last few seconds may not be written yet.\n' + API_HELP,
  options: {
    period: periodOption,
    format: { type: 'string', value: 'ndjson|csv', description: 'default ndjson' },
    out: { type: 'string', value: 'FILE', description: 'write to FILE instead of stdout' },
    output: { type: 'string', value: 'FILE', description: 'the same as --out' },
  },
  args: { min: 0, max: 0 },
  target: 'api',
  run: async (context) => {
    const when = period(context)
    const format = context.string('format') ?? 'ndjson'
    if (format !== 'ndjson' && format !== 'csv') {
      throw usageError(`--format must be ndjson or csv, got ${JSON.stringify(format)}`)
    }
    if (context.string('out') !== undefined && context.string('output') !== undefined) {
      throw usageError('give --out or --output, not both')
    }
    const file = context.string('out') ?? context.string('output')
    if (context.out.json && file === undefined) throw usageError('--json needs --out FILE: stdout carries the export')
    const api = await connect(context)
    const query = new URLSearchParams({ format, ...(when !== undefined && { period: when }) })
    const output = await openOutput(file)
    const progress = countProgress('usage export', 'tenants')
    const header = format === 'csv' ? 1 : 0
    let lines = 0
    // A failed write (a full disk, a closed pipe) is reported as such, not as the download's failure.
    let writeError: NodeJS.ErrnoException | undefined
    output.sink.on('error', (error: NodeJS.ErrnoException) => { writeError ??= error })
    try {
      const body = await api.download(`/admin/v1/usage?${query.toString()}`)
      try {
        for await (const chunk of body as AsyncIterable<Buffer>) {
          if (!output.sink.write(chunk)) await once(output.sink, 'drain')
          if (writeError !== undefined) break
          lines += newlines(chunk)
          progress.update(Math.max(0, lines - header))
        }
      } catch (error) {
        if (writeError !== undefined) throw writeFailure(file, writeError)
        const cause = (error as { cause?: { code?: string, message?: string } }).cause
        const why = cause?.code ?? cause?.message ?? (error as Error).message
        throw failureError(`the download from ${api.url} broke off after ${Math.max(0, lines - header)} tenants ` +
          `(${why})`)
      }
      if (writeError !== undefined) throw writeFailure(file, writeError)
      progress.stop()
      await output.finish()
    } catch (error) {
      progress.stop()
      await output.abandon()
      throw error
    }
    const tenants = Math.max(0, lines - header)
    // On stderr: stdout is the export's, or (--json) the document's alone.
    if (context.out.json) context.out.result([], { period: when ?? null, format, file, tenants })
    else {
      process.stderr.write(`exported the usage of ${tenants} tenants for ${periodText(when)} ` +
        `as ${format}${file === undefined ? '' : ` to ${file}`}\n`)
    }
  },
}

interface RefusalRanking {
  period: string
  data: Array<{
    tenant_id: string, slug: string | null, refusals: number, rate: number, concurrency: number, quota: number
  }>
}

const usageRefusals: Command = {
  name: 'usage refusals',
  summary: 'List the tenants refused most often in a billing period.',
  usage: '[--period YYYY-MM] [--limit N]',
  help: 'Refusals by a rate limit (RATE), the tenant\'s share of the database (CONCURRENCY) or a quota (QUOTA), ' +
    'most first: the tenants to look at before raising a limit or a plan. Written with the request counts, every ' +
    'few seconds.\n' + API_HELP,
  options: {
    period: periodOption,
    limit: { type: 'string', value: 'N', description: 'how many tenants, 1 to 1000 (default 20)' },
  },
  args: { min: 0, max: 0 },
  target: 'api',
  run: async (context) => {
    const when = period(context)
    const limit = context.string('limit')
    if (limit !== undefined && !(/^[0-9]+$/.test(limit) && Number(limit) >= 1 && Number(limit) <= 1000)) {
      throw usageError(`--limit must be a whole number from 1 to 1000, got ${JSON.stringify(limit)}`)
    }
    const api = await connect(context)
    const query = new URLSearchParams({
      ...(when !== undefined && { period: when }), ...(limit !== undefined && { limit }),
    })
    const ranking = await api.request<RefusalRanking>('GET', `/admin/v1/usage/refusals?${query.toString()}`)
    context.out.result(ranking.data.length === 0
      ? [`no tenant was refused in ${ranking.period}`]
      : table(['TENANT', 'SLUG', 'REFUSALS', 'RATE', 'CONCURRENCY', 'QUOTA'], ranking.data.map((r) => [
        r.tenant_id, r.slug ?? '-', String(r.refusals), String(r.rate), String(r.concurrency), String(r.quota),
      ])),
    ranking)
  },
}

export const usageCommands: Command[] = [usageExport, usageRefusals]
