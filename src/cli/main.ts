// `npx rowfence <command>`: the operator CLI (bin/rowfence.js runs this file through tsx).
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { columns, commandHelp, GLOBAL_OPTIONS, optionsHelp, parseCommand, wrap, type Command } from './command.ts'
import { dataCommands } from './data.ts'
import { databaseCommands } from './db.ts'
import { keyCommands } from './keys.ts'
import { limitCommands } from './limits.ts'
import { CliError, EXIT, EXIT_CODES_HELP, oneLine, Output, usageError } from './output.ts'
import { tenantCommands } from './tenants.ts'
import { tokenCommands } from './token.ts'
import { usageCommands } from './usage.ts'
import { webhookCommands } from './webhooks.ts'

const ROOT = path.resolve(import.meta.dirname, '../..')

const COMMANDS: Command[] = [
  ...tenantCommands, ...keyCommands, ...limitCommands, ...usageCommands, ...dataCommands, ...databaseCommands,
  ...tokenCommands, ...webhookCommands,
]
const GROUPS: Record<string, string> = {
  tenants: 'Create, list, show, move and erase tenants; list erasure receipts',
  keys: 'Issue and revoke a tenant\'s API keys',
  plans: 'List, create, change and delete plans: named sets of limits',
  limits: 'Show and change a tenant\'s plan and its own overrides',
  usage: 'Export every tenant\'s usage for billing; rank the tenants refused most',
  webhooks: 'Receive webhooks locally, for development',
}

function mainHelp (): string {
  return [
    'Usage: rowfence <command> [arguments] [options]',
    '',
    wrap('The rowfence operator CLI. Tenant, key, plan, limit and usage commands go over the operator API (the ' +
      'running `npm start`, or --url and a token); export, import, check and migrate work on the database ' +
      '(DATABASE_URL, or the embedded one: the running `npm start`\'s, else one started for the command).'),
    '',
    'Commands:',
    columns(COMMANDS.map((c) => [c.name, c.summary])),
    '',
    'Global options:',
    optionsHelp(GLOBAL_OPTIONS),
    '',
    wrap('Environment: ROWFENCE_URL, ROWFENCE_ADMIN_TOKEN (the operator API); DATABASE_URL, APP_DATABASE_URL ' +
      '(the database); DATA_DIR (default .data in the package, as for npm start), EXPORT_SIGNING_KEY, JWT_SECRET.'),
    '',
    wrap('The operator token: prefer ROWFENCE_ADMIN_TOKEN or --token-file FILE to --token, which other users see ' +
      'in `ps` and your shell keeps in its history. It is not sent over plain http:// to another machine without ' +
      '--insecure-http, nor after a redirect; the token `npm start` generated goes to a loopback URL only, and ' +
      'only when DATA_DIR/server.json is this user\'s own file, writable by no one else.'),
    '',
    wrap('Results go to stdout (with --json, one JSON document); progress and errors go to stderr, an error as ' +
      'one line.'),
    '',
    EXIT_CODES_HELP,
    '',
    'rowfence <command> --help shows a command\'s arguments and options.',
  ].join('\n') + '\n'
}

function groupHelp (group: string): string {
  const commands = COMMANDS.filter((c) => c.name.startsWith(`${group} `))
  return [
    `Usage: rowfence ${group} <command> [arguments] [options]`, '', `${GROUPS[group]}.`, '', 'Commands:',
    columns(commands.map((c) => [c.name, c.summary])),
    '', `rowfence ${group} <command> --help shows a command's arguments and options.`,
  ].join('\n') + '\n'
}

const GLOBAL_WITH_VALUE = new Set(['--url', '--token', '--token-file'])
/** The command being run, for the prefix of its error line. */
let currentCommand: string | undefined

/** The command words (one, or a group and one) and the arguments left for the command's own parsing. */
function split (argv: string[]): { words: string[], rest: string[] } {
  const words: string[] = []
  const rest: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const wanted = words.length === 0 || (words.length === 1 && GROUPS[words[0]!] !== undefined)
    if (arg === '--') { rest.push(...argv.slice(i)); break }
    if (arg.startsWith('-') || !wanted) {
      rest.push(arg)
      if (GLOBAL_WITH_VALUE.has(arg) && i + 1 < argv.length) rest.push(argv[++i]!)
      continue
    }
    words.push(arg)
  }
  return { words, rest }
}

const version = (): string =>
  (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version

async function run (argv: string[]): Promise<void> {
  const { words, rest } = split(argv)
  const wantsHelp = rest.includes('--help') || rest.includes('-h')
  if (words[0] === 'help') return run([...words.slice(1), '--help'])
  if (words.length === 0) {
    if (rest.includes('--version')) { process.stdout.write(`${version()}\n`); return }
    if (wantsHelp) { process.stdout.write(mainHelp()); return }
    process.stderr.write(mainHelp())
    throw usageError(rest.length === 0 ? 'no command given' : `unknown option ${rest[0]!}`)
  }
  const group = GROUPS[words[0]!] === undefined ? undefined : words[0]!
  if (group !== undefined && words.length === 1) {
    if (wantsHelp) { process.stdout.write(groupHelp(group)); return }
    process.stderr.write(groupHelp(group))
    throw usageError(`which ${group} command? (see rowfence ${group} --help)`)
  }
  const name = words.join(' ')
  const command = COMMANDS.find((c) => c.name === name)
  if (command === undefined) {
    throw usageError(`unknown command "${name}" (see rowfence ${group ?? ''} --help)`.replace('  ', ' '))
  }
  currentCommand = command.name
  const parsed = parseCommand(command, rest, (json) => new Output(json))
  if (parsed.help) { process.stdout.write(commandHelp(command)); return }
  await command.run(parsed.context)
}

// A relative DATA_DIR is the package's, as for `npm start` (npm runs scripts in the package folder),
// wherever the CLI is started from: so that it finds the server and the secrets `npm start` wrote.
process.env.DATA_DIR = path.resolve(ROOT, process.env.DATA_DIR === undefined || process.env.DATA_DIR === ''
  ? '.data'
  : process.env.DATA_DIR)

try {
  await run(process.argv.slice(2))
} catch (error) {
  const code = error instanceof CliError ? error.exitCode : EXIT.failure
  const prefix = currentCommand === undefined ? 'rowfence' : `rowfence ${currentCommand}`
  process.stderr.write(`${prefix}: ${oneLine(error)}\n`)
  // The stack is for whoever debugs the CLI itself, never for the operator's terminal by default.
  if (process.env.ROWFENCE_DEBUG === '1' && error instanceof Error) process.stderr.write(`${error.stack}\n`)
  process.exitCode = code
}
// A connection or timer some library keeps open must not keep a finished command waiting.
setTimeout(() => { process.exit() }, 2000).unref()
