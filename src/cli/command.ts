import { parseArgs } from 'node:util'
import { usageError, type Output } from './output.ts'

export interface OptionSpec {
  type: 'string' | 'boolean'
  short?: string
  /** A string option given any number of times (read with `strings`). */
  multiple?: boolean
  /** For the help: the value's placeholder (strings) and what the option does. */
  value?: string
  description: string
}

/** The options every command takes. */
export const GLOBAL_OPTIONS = {
  json: { type: 'boolean', description: 'print the result as one JSON document on stdout' },
  url: {
    type: 'string',
    value: 'URL',
    description: 'the server (default: ROWFENCE_URL, else the `npm start` recorded in DATA_DIR/server.json)',
  },
  token: {
    type: 'string',
    value: 'TOKEN',
    description: 'the operator token (default: ROWFENCE_ADMIN_TOKEN, ADMIN_TOKEN, else the generated ' +
      'DATA_DIR/admin-token of the recorded server, sent to a loopback URL only). On a command line it shows in ' +
      '`ps` and shell history: prefer ROWFENCE_ADMIN_TOKEN or --token-file',
  },
  'token-file': { type: 'string', value: 'FILE', description: 'read the operator token from FILE' },
  'insecure-http': {
    type: 'boolean',
    description: 'allow sending the operator token over plain http:// to a host other than this machine ' +
      '(refused otherwise: it would cross the network in cleartext)',
  },
  help: { type: 'boolean', short: 'h', description: 'show this help' },
} satisfies Record<string, OptionSpec>

/** What every API command's help says of how it reaches the server. */
export const API_HELP = 'Works over the operator API: --url and ROWFENCE_ADMIN_TOKEN (or --token-file), ' +
  'ROWFENCE_URL, or the running `npm start` recorded in DATA_DIR/server.json.'

/** What every database command's help says of how it reaches the database. */
export const DATABASE_HELP = 'Works on the database: DATABASE_URL (the owner; `check` also needs APP_DATABASE_URL, ' +
  'the runtime role) when set; else the embedded PostgreSQL in DATA_DIR — the one a running `npm start` uses, or ' +
  'one started for this command alone.'

/** The global options of the operator API, refused by the other commands rather than ignored. */
const API_OPTIONS = ['url', 'token', 'token-file', 'insecure-http']

export interface RunContext {
  /** Positional arguments, after the command's name. */
  args: string[]
  string: (name: string) => string | undefined
  /** Every value of a `multiple` option, in the order given. */
  strings: (name: string) => string[]
  flag: (name: string) => boolean
  out: Output
}

export interface Command {
  /** The words that name it: 'tenants create', 'export'. */
  name: string
  summary: string
  /** What follows the name in the usage line. */
  usage: string
  /** More lines of help: what it prints, what it connects to. */
  help?: string
  options?: Record<string, OptionSpec>
  /** How many positional arguments it takes. */
  args: { min: number, max: number }
  /**
   * What it works on: the operator API (--url, --token), the database (DATABASE_URL, or the embedded
   * one), or neither. The others refuse the API's options rather than ignore them.
   */
  target: 'api' | 'database' | 'local'
  run: (context: RunContext) => Promise<void>
}

const WIDTH = 100

/** Wraps text at WIDTH columns; continuation lines are indented by `hang` spaces. Keeps given newlines. */
export function wrap (text: string, hang = 0): string {
  return text.split('\n').map((paragraph) => {
    const lines: string[] = []
    const indent = /^ */.exec(paragraph)![0]
    let line = indent
    for (const word of paragraph.slice(indent.length).split(' ')) {
      if (line.trim() !== '' && line.length + 1 + word.length > WIDTH) {
        lines.push(line)
        line = ' '.repeat(hang) + word
      } else {
        line = line.trim() === '' ? line + word : `${line} ${word}`
      }
    }
    lines.push(line)
    return lines.join('\n')
  }).join('\n')
}

/** Two columns: the left padded to its widest, the right wrapped beside it. */
export function columns (rows: Array<[string, string]>, indent = 2): string {
  const width = Math.max(...rows.map(([left]) => left.length))
  return rows.map(([left, right]) => wrap(`${' '.repeat(indent)}${left.padEnd(width)}  ${right}`, indent + width + 2))
    .join('\n')
}

function optionLine (name: string, spec: OptionSpec): [string, string] {
  const short = spec.short === undefined ? '    ' : `-${spec.short}, `
  return [`${short}--${name}${spec.type === 'string' ? ` ${spec.value ?? 'VALUE'}` : ''}`,
    spec.multiple === true ? `${spec.description} (repeatable)` : spec.description]
}

export function optionsHelp (options: Record<string, OptionSpec>): string {
  return columns(Object.entries(options).map(([name, spec]) => optionLine(name, spec)))
}

export function commandHelp (command: Command): string {
  const parts = [`Usage: rowfence ${command.name} ${command.usage}`.trimEnd(), '', wrap(command.summary)]
  if (command.help !== undefined) parts.push('', wrap(command.help))
  if (command.options !== undefined && Object.keys(command.options).length > 0) {
    parts.push('', 'Options:', optionsHelp(command.options))
  }
  const globals = command.target === 'api'
    ? GLOBAL_OPTIONS
    : { json: GLOBAL_OPTIONS.json, help: GLOBAL_OPTIONS.help }
  parts.push('', 'Global options:', optionsHelp(globals), '', 'Exit codes: see rowfence --help.')
  return parts.join('\n') + '\n'
}

/** Parses a command's arguments strictly: an unknown option or a missing value is a usage error. */
export function parseCommand (command: Command, argv: string[], output: (json: boolean) => Output): {
  context: RunContext
  help: boolean
} {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...GLOBAL_OPTIONS, ...command.options },
      allowPositionals: true,
      strict: true,
    })
  } catch (error) {
    // Node's messages end with advice about '--' that does not apply here; keep the first sentence.
    const message = (error as Error).message.split(/\. |\n/)[0]!.replace(/^Unknown option/, 'unknown option')
    throw usageError(`${message} (see rowfence ${command.name} --help)`)
  }
  const values = parsed.values as Record<string, string | string[] | boolean | undefined>
  const args = parsed.positionals
  const help = values.help === true
  if (!help && (args.length < command.args.min || args.length > command.args.max)) {
    const expected = command.args.min === command.args.max
      ? `${command.args.min}`
      : `${command.args.min} to ${command.args.max}`
    throw usageError(`expected ${expected} argument(s), got ${args.length}: ` +
      `rowfence ${command.name} ${command.usage} (see --help)`)
  }
  const apiOption = API_OPTIONS.find((name) => values[name] !== undefined)
  if (!help && command.target !== 'api' && apiOption !== undefined) {
    throw usageError(`--${apiOption} is for the operator API; ${command.name} works on ` +
      (command.target === 'database'
        ? 'the database (DATABASE_URL, else the embedded one in DATA_DIR)'
        : 'this machine only'))
  }
  const string = (name: string): string | undefined => {
    const value = values[name]
    return typeof value === 'string' ? value : undefined
  }
  const strings = (name: string): string[] => {
    const value = values[name]
    return Array.isArray(value) ? value : typeof value === 'string' ? [value] : []
  }
  return {
    help,
    context: { args, string, strings, flag: (name) => values[name] === true, out: output(values.json === true) },
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export const isUuid = (value: string): boolean => UUID.test(value)

/** A UUID argument, lower-cased; a usage error otherwise. */
export function uuidArgument (value: string | undefined, what: string): string {
  if (value === undefined || !isUuid(value)) {
    throw usageError(`${what} must be a UUID, got ${JSON.stringify(value ?? '')}`)
  }
  return value.toLowerCase()
}
