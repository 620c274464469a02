// npm run token -- --sub USER [--tenant TENANT_ID] [--ttl SECONDS]
// Mints a development JWT (HS256) for a user, signed with JWT_SECRET or, when that is unset, the
// secret `npm start` generated under DATA_DIR. The user must also be a member of the tenant
// (POST /v1/members) for the token to be accepted.
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { createSigner } from 'fast-jwt'
import { loadConfig } from '../src/config.ts'

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: { sub: { type: 'string' }, tenant: { type: 'string' }, ttl: { type: 'string', default: '3600' } },
  })
  if (values.sub === undefined) throw new Error('--sub USER is required')
  const ttl = Number(values.ttl)
  if (!Number.isInteger(ttl) || ttl <= 0) throw new Error('--ttl must be a positive number of seconds')
  const config = loadConfig()
  if (config.JWT_PUBLIC_KEY !== undefined) throw new Error('JWT_PUBLIC_KEY is set: tokens come from your identity provider, not from this script')
  const secretFile = path.resolve(config.DATA_DIR, 'jwt-secret')
  const secret = config.JWT_SECRET ?? (await readFile(secretFile, 'utf8').catch(() => {
    throw new Error(`no JWT_SECRET and no ${secretFile}: run npm start once, or set JWT_SECRET`)
  })).trim()
  const sign = createSigner({ key: secret, algorithm: 'HS256', expiresIn: ttl * 1000 })
  console.log(sign({ sub: values.sub, ...(values.tenant !== undefined && { tid: values.tenant }) }))
}

main().catch((error: unknown) => {
  console.error(`token: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
})
