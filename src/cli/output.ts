/**
 * What the CLI prints and how it exits. Results go to stdout (one JSON document with --json), progress
 * and diagnostics to stderr; an error is one line on stderr, never a stack trace, and its exit code says
 * what kind of error it was, so that scripts can tell them apart.
 */
export const EXIT = {
  /** Done. */
  ok: 0,
  /** The server or the database failed (or could not be reached), or something unexpected. */
  failure: 1,
  /** A bad command, option, argument or environment variable; nothing was done. */
  usage: 2,
  /** The tenant, key or other thing named does not exist. */
  notFound: 3,
  /** Refused: a conflict with the current state (slug taken, tenant busy) or a refused input (bad export). */
  refused: 4,
} as const
export type ExitCode = typeof EXIT[keyof typeof EXIT]

export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  failure: the server or the database failed or could not be reached
  2  usage error: a bad command, option, argument or environment variable (nothing was done)
  3  not found: the tenant, key or other thing named does not exist
  4  refused: a conflict with the current state (slug taken, tenant busy, last admin key) or a refused
     input (an export whose signature does not verify)`

/** An error the CLI reports as one line with its exit code. */
export class CliError extends Error {
  override name = 'CliError'
  constructor (message: string, readonly exitCode: ExitCode) {
    super(message)
  }
}

export const usageError = (message: string): CliError => new CliError(message, EXIT.usage)
export const notFoundError = (message: string): CliError => new CliError(message, EXIT.notFound)
export const refusedError = (message: string): CliError => new CliError(message, EXIT.refused)
export const failureError = (message: string): CliError => new CliError(message, EXIT.failure)

/** The one line an error is reported as: its message, flattened (a multi-line message stays one line). */
export function oneLine (error: unknown): string {
  const text = error instanceof Error ? error.message : String(error)
  return text.replace(/\s*\n\s*/g, ' ').trim() || (error instanceof Error ? error.name : 'unknown error')
}

export class Output {
  constructor (readonly json: boolean) {}

  /** The command's result: the human lines, or (with --json) the document. */
  result (human: string | string[], document: unknown): void {
    if (this.json) {
      process.stdout.write(JSON.stringify(document, null, 2) + '\n')
      return
    }
    const lines = Array.isArray(human) ? human : [human]
    if (lines.length > 0) process.stdout.write(lines.join('\n') + '\n')
  }

  /** A diagnostic for a person (what is being connected to, started): stderr, so stdout stays the result. */
  note (line: string): void {
    process.stderr.write(`rowfence: ${line}\n`)
  }
}

/** Columns aligned on the widest cell; the last column is not padded. */
export function table (header: string[], rows: string[][]): string[] {
  const all = [header, ...rows]
  const widths = header.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)))
  return all.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  '))
}

/** `key: value` lines, the keys aligned. */
export function fields (entries: Array<[string, string]>): string[] {
  const width = Math.max(...entries.map(([key]) => key.length)) + 1
  return entries.map(([key, value]) => `${`${key}:`.padEnd(width)} ${value}`)
}
