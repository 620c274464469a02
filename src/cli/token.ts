import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { uuidArgument, type Command } from './command.ts'
import { failureError, usageError } from './output.ts'

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 }

/** `3600`, `90s`, `15m`, `1h`, `7d` in seconds; a usage error otherwise. */
export function parseTtl (text: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(text.trim())
  const seconds = match === null ? NaN : Number(match[1]) * UNITS[match[2] === '' ? 's' : match[2]!]!
  if (!Number.isSafeInteger(seconds) || seconds <= 0) {
    throw usageError(`--ttl must be a positive duration such as 3600, 90s, 15m, 1h or 7d, got ${JSON.stringify(text)}`)
  }
  return seconds
}

const token: Command = {
  name: 'token',
  summary: 'Mint a development user JWT (HS256) and print only the token on stdout.',
  usage: '--user ID [--tenant TENANT_ID] [--ttl 1h]',
  help: 'For scripts: JWT=$(npx rowfence token --user alice --tenant "$TENANT"). Signed with JWT_SECRET or, when ' +
    'that is unset, the secret `npm start` generated in DATA_DIR/jwt-secret. The server accepts it once the user ' +
    'is a member of the tenant (POST /v1/members, then the user accepts). Carries JWT_ISSUER and JWT_AUDIENCE ' +
    'when they are set. Refused when JWT_PUBLIC_KEY is set: tokens then come from your identity provider.',
  options: {
    user: { type: 'string', value: 'ID', description: 'the user: the token\'s sub claim' },
    sub: { type: 'string', value: 'ID', description: 'the same as --user (as `npm run token` took it)' },
    tenant: { type: 'string', value: 'TENANT_ID', description: 'the tenant the token selects (its tid claim)' },
    ttl: {
      type: 'string', value: 'DURATION', description: 'how long it is valid: 3600, 90s, 15m, 1h, 7d (default 1h)',
    },
  },
  args: { min: 0, max: 0 },
  target: 'local',
  run: async ({ string, out }) => {
    const user = string('user') ?? string('sub')
    if (user === undefined || user === '') throw usageError('--user ID is required (the token\'s sub)')
    if (string('user') !== undefined && string('sub') !== undefined) throw usageError('give --user or --sub, not both')
    if (user.length > 255 || user.includes('\u0000')) throw usageError('--user must be 1 to 255 characters')
    const tenant = string('tenant') === undefined ? undefined : uuidArgument(string('tenant'), '--tenant')
    const ttl = parseTtl(string('ttl') ?? '1h')
    const [{ createSigner }, { environment }] = await Promise.all([import('fast-jwt'), import('./target.ts')])
    const config = environment()
    if (config.JWT_PUBLIC_KEY !== undefined) {
      throw usageError('JWT_PUBLIC_KEY is set: tokens come from your identity provider, not from this command')
    }
    const secretFile = path.resolve(config.DATA_DIR, 'jwt-secret')
    const secret = config.JWT_SECRET ?? (await readFile(secretFile, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw failureError(`no JWT_SECRET and cannot read ${secretFile} (${error.code ?? error.message}): ` +
        'run npm start once, or set JWT_SECRET')
    })).trim()
    const sign = createSigner({ key: secret, algorithm: 'HS256', expiresIn: ttl * 1000 })
    // The issuer and audience the server requires, when it is configured to.
    const jwt = sign({
      sub: user,
      ...(tenant !== undefined && { tid: tenant }),
      ...(config.JWT_ISSUER !== undefined && { iss: config.JWT_ISSUER }),
      ...(config.JWT_AUDIENCE !== undefined && { aud: config.JWT_AUDIENCE }),
    })
    const expiresAt = new Date(Date.now() + ttl * 1000).toISOString()
    out.result(jwt, { token: jwt, sub: user, tid: tenant ?? null, expires_at: expiresAt })
  },
}

export const tokenCommands: Command[] = [token]
