import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.ts'

const urls = { DATABASE_URL: 'postgres://owner:pw@db/rowfence', APP_DATABASE_URL: 'postgres://app:pw@db/rowfence' }

t.test('defaults apply when nothing is set', async (t) => {
  const config = loadConfig({})
  t.match(config, { NODE_ENV: 'development', PORT: 3000, HOST: '127.0.0.1', DB_POOL_MAX: 10, MIGRATE_ON_START: true })
  t.equal(config.DATABASE_URL, undefined)
})

t.test('text values are parsed into their types', async (t) => {
  const config = loadConfig({ PORT: '8080', DB_POOL_MAX: '4', MIGRATE_ON_START: 'false', ...urls })
  t.equal(config.PORT, 8080)
  t.equal(config.DB_POOL_MAX, 4)
  t.equal(config.MIGRATE_ON_START, false)
})

t.test('a bad value stops start-up with one line naming the variable', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ PORT: 'eighty' }, /^invalid environment variable PORT: .*\(got "eighty"\)$/],
    [{ PORT: '70000' }, /^invalid environment variable PORT:/],
    [{ NODE_ENV: 'staging' }, /^invalid environment variable NODE_ENV:/],
    [{ LOG_LEVEL: 'loud' }, /^invalid environment variable LOG_LEVEL:/],
    [{ ADMIN_TOKEN: 'short' }, /^invalid environment variable ADMIN_TOKEN: [^"]*$/],
    [{ DATABASE_URL: 'mysql://secret@x/y', APP_DATABASE_URL: urls.APP_DATABASE_URL }, /^invalid environment variable DATABASE_URL: expected a postgres:\/\/ connection URL$/],
    [{ DATABASE_URL: urls.DATABASE_URL }, /^invalid environment variable APP_DATABASE_URL: set both/],
    [{ NODE_ENV: 'production', ...urls }, /^invalid environment variable ADMIN_TOKEN: required in production/],
    [{ NODE_ENV: 'production', ADMIN_TOKEN: 'x'.repeat(32) }, /^invalid environment variable DATABASE_URL: required in production/],
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { loadConfig(env); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, JSON.stringify(env))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, /\n/, 'one line')
    t.notMatch((error as Error).message, /secret/, 'secrets are not echoed')
  }
})

t.test('a JWT public key that does not parse or does not fit JWT_ALGORITHM stops start-up with one line', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const pem = (type: 'rsa' | 'ec', options: Record<string, unknown>): string =>
    (generateKeyPairSync(type as 'rsa', options as { modulusLength: number }).publicKey.export({ type: 'spki', format: 'pem' }) as string)
  const rsa = pem('rsa', { modulusLength: 2048 })
  const smallRsa = pem('rsa', { modulusLength: 1024 })
  const ec = pem('ec', { namedCurve: 'prime256v1' })
  const ec384 = pem('ec', { namedCurve: 'secp384r1' })
  const oneLine = (key: string): string => key.trim().replaceAll('\n', '\\n')

  t.equal(loadConfig({ JWT_PUBLIC_KEY: rsa }).JWT_PUBLIC_KEY, rsa, 'an RSA key for RS256 (the default)')
  t.ok(loadConfig({ JWT_PUBLIC_KEY: oneLine(ec), JWT_ALGORITHM: 'ES256' }), 'a P-256 key for ES256, newlines written as \\n')
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ JWT_PUBLIC_KEY: '-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----' }, /^invalid environment variable JWT_PUBLIC_KEY: expected a PEM public key/],
    [{ JWT_PUBLIC_KEY: rsa.replace(/[A-Za-z0-9]{20}/, 'A'.repeat(20)) }, /^invalid environment variable JWT_PUBLIC_KEY: expected a PEM public key/],
    [{ JWT_PUBLIC_KEY: ec }, /^invalid environment variable JWT_PUBLIC_KEY: a key of type ec cannot verify RS256 tokens/],
    [{ JWT_PUBLIC_KEY: oneLine(ec), JWT_ALGORITHM: 'RS256' }, /^invalid environment variable JWT_PUBLIC_KEY: a key of type ec cannot verify RS256/],
    [{ JWT_PUBLIC_KEY: rsa, JWT_ALGORITHM: 'ES256' }, /^invalid environment variable JWT_PUBLIC_KEY: a key of type rsa cannot verify ES256/],
    [{ JWT_PUBLIC_KEY: ec384, JWT_ALGORITHM: 'ES256' }, /^invalid environment variable JWT_PUBLIC_KEY: ES256 needs a P-256 key/],
    [{ JWT_PUBLIC_KEY: smallRsa }, /^invalid environment variable JWT_PUBLIC_KEY: the RSA key has 1024 bits/],
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { loadConfig(env); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, JSON.stringify(env).slice(0, 80))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, /\n/, 'one line')
    t.notMatch((error as Error).message, /MII|not base64/, 'the key is not echoed')
  }
})
