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
    [{ DATABASE_URL: 'mysql://secret@x/y', APP_DATABASE_URL: urls.APP_DATABASE_URL },
      /^invalid environment variable DATABASE_URL: expected a postgres:\/\/ connection URL$/],
    [{ DATABASE_URL: urls.DATABASE_URL }, /^invalid environment variable APP_DATABASE_URL: set both/],
    [{ NODE_ENV: 'production', ...urls }, /^invalid environment variable ADMIN_TOKEN: required in production/],
    [{ NODE_ENV: 'production', ADMIN_TOKEN: 'x'.repeat(32) },
      /^invalid environment variable DATABASE_URL: required in production/],
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { loadConfig(env); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, JSON.stringify(env))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, /\n/, 'one line')
    t.notMatch((error as Error).message, /secret/, 'secrets are not echoed')
  }
})

t.test('a bad value\'s message says "expected" once, then what was expected', async (t) => {
  const cases: Array<[Record<string, string>, string]> = [
    [{ PORT: 'abc' }, 'PORT: expected integer (got "abc")'],
    [{ PORT: '70000' }, 'PORT: expected integer to be less or equal to 65535 (got 70000)'],
    [{ MIGRATE_ON_START: 'maybe' }, 'MIGRATE_ON_START: expected boolean (got "maybe")'],
    [{ NODE_ENV: 'staging' }, 'NODE_ENV: expected one of development, production, test (got "staging")'],
    [{ JWT_ALGORITHM: 'none' }, 'JWT_ALGORITHM: expected one of HS256, RS256, ES256 (got "none")'],
    [{ ADMIN_TOKEN: 'short' }, 'ADMIN_TOKEN: expected string length greater or equal to 32'],
  ]
  for (const [env, message] of cases) {
    t.throws(() => loadConfig(env), new ConfigError(`invalid environment variable ${message}`), JSON.stringify(env))
  }
  // A value no schema accepts, for variables of every kind: no message doubles the word.
  const names = ['PORT', 'NODE_ENV', 'LOG_LEVEL', 'DB_POOL_MAX', 'DATABASE_SSL_MODE', 'WEB_CONCURRENCY', 'JWT_SECRET']
  for (const name of names) {
    const once = /^invalid environment variable \S+: expected (?!expected)/
    t.throws(() => loadConfig({ [name]: '\u0001' }), { message: once }, name)
  }
})

t.test('a JWT public key that does not parse or does not fit JWT_ALGORITHM stops start-up with one line', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const pem = (type: 'rsa' | 'ec', options: Record<string, unknown>): string =>
    (generateKeyPairSync(type as 'rsa', options as { modulusLength: number }).publicKey
      .export({ type: 'spki', format: 'pem' }) as string)
  const rsa = pem('rsa', { modulusLength: 2048 })
  const smallRsa = pem('rsa', { modulusLength: 1024 })
  const ec = pem('ec', { namedCurve: 'prime256v1' })
  const ec384 = pem('ec', { namedCurve: 'secp384r1' })
  const oneLine = (key: string): string => key.trim().replaceAll('\n', '\\n')

  t.equal(loadConfig({ JWT_PUBLIC_KEY: rsa }).JWT_PUBLIC_KEY, rsa, 'an RSA key for RS256 (the default)')
  t.ok(loadConfig({ JWT_PUBLIC_KEY: oneLine(ec), JWT_ALGORITHM: 'ES256' }),
    'a P-256 key for ES256, newlines written as \\n')
  const refused = (problem: string): RegExp => new RegExp(`^invalid environment variable JWT_PUBLIC_KEY: ${problem}`)
  const garbled = '-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----'
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ JWT_PUBLIC_KEY: garbled }, refused('expected a PEM public key')],
    [{ JWT_PUBLIC_KEY: rsa.replace(/[A-Za-z0-9]{20}/, 'A'.repeat(20)) }, refused('expected a PEM public key')],
    [{ JWT_PUBLIC_KEY: ec }, refused('a key of type ec cannot verify RS256 tokens')],
    [{ JWT_PUBLIC_KEY: oneLine(ec), JWT_ALGORITHM: 'RS256' }, refused('a key of type ec cannot verify RS256')],
    [{ JWT_PUBLIC_KEY: rsa, JWT_ALGORITHM: 'ES256' }, refused('a key of type rsa cannot verify ES256')],
    [{ JWT_PUBLIC_KEY: ec384, JWT_ALGORITHM: 'ES256' }, refused('ES256 needs a P-256 key')],
    [{ JWT_PUBLIC_KEY: smallRsa }, refused('the RSA key has 1024 bits')],
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { loadConfig(env); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, JSON.stringify(env).slice(0, 80))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, /\n/, 'one line')
    t.notMatch((error as Error).message, /MII|not base64/, 'the key is not echoed')
  }
})

t.test('database TLS: the rules on DATABASE_SSL_MODE, DATABASE_SSL_CA_FILE and plaintext in production', async (t) => {
  const production = { NODE_ENV: 'production', ADMIN_TOKEN: 'x'.repeat(32) }
  const local = {
    DATABASE_URL: 'postgres://owner:secret@localhost/rowfence',
    APP_DATABASE_URL: 'postgres://app:secret@127.0.0.1:5432/rowfence',
  }
  const verifyFull = { DATABASE_SSL_MODE: 'verify-full', DATABASE_SSL_CA_FILE: '/ca.pem' }
  t.equal(loadConfig(urls).DATABASE_SSL_MODE, 'disable', 'no TLS unless asked (development, tests)')
  t.equal(loadConfig({ ...urls, ...verifyFull }).DATABASE_SSL_MODE, 'verify-full')
  const allowed: Array<Record<string, string>> = [
    { ...production, ...local },
    { ...production, DATABASE_URL: 'postgres://o@127.0.0.5/r', APP_DATABASE_URL: 'postgres://a@[::1]/r' },
    { ...production, DATABASE_URL: 'postgres://o@%2Fvar%2Frun%2Fpg/r', APP_DATABASE_URL: 'postgres://a@x/r?host=/tmp' },
    { ...production, ...urls, DATABASE_SSL_MODE: 'require' },
    { ...production, ...urls, ...verifyFull },
    { ...production, ...urls, DATABASE_ALLOW_PLAINTEXT: 'true' },
    { ...urls },
  ]
  for (const env of allowed) t.doesNotThrow(() => loadConfig(env), JSON.stringify(env))

  const invalid = (name: string): string => `^invalid environment variable ${name}: `
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ ...production, ...urls },
      RegExp(invalid('DATABASE_SSL_MODE') + 'DATABASE_URL reaches db without TLS in production; .*PLAINTEXT=true')],
    [{ ...production, ...local, DB_LISTEN_URL: 'postgres://app:secret@10.0.0.7/rowfence' },
      RegExp(invalid('DATABASE_SSL_MODE') + 'DB_LISTEN_URL reaches 10\\.0\\.0\\.7 without TLS')],
    [{ ...production, ...local, APP_DATABASE_URL: 'postgres://app:secret@128.0.0.1/rowfence' },
      /APP_DATABASE_URL reaches 128\.0\.0\.1 without TLS/],
    [{ ...production, ...urls, DATABASE_ALLOW_PLAINTEXT: 'false' }, /DATABASE_URL reaches db without TLS/],
    [{ ...urls, DATABASE_URL: 'postgres://owner:secret@db/rowfence?sslmode=require' },
      RegExp(invalid('DATABASE_URL') + 'remove sslmode from the URL: TLS is set .* by DATABASE_SSL_MODE')],
    [{ ...urls, APP_DATABASE_URL: 'postgres://app:secret@db/rowfence?sslrootcert=/ca.pem' },
      RegExp(invalid('APP_DATABASE_URL') + 'remove sslrootcert')],
    [{ ...urls, DB_LISTEN_URL: 'postgres://app:secret@db/rowfence?ssl=true' },
      RegExp(invalid('DB_LISTEN_URL') + 'remove ssl from')],
    [{ ...urls, DATABASE_SSL_MODE: 'verify_full' },
      RegExp(invalid('DATABASE_SSL_MODE') + 'expected disable, require, verify-ca or verify-full \\(got "verify_')],
    [{ ...urls, DATABASE_SSL_CA_FILE: '/ca.pem' },
      RegExp(invalid('DATABASE_SSL_CA_FILE') + 'DATABASE_SSL_MODE=disable does not check')],
    [{ ...urls, DATABASE_SSL_MODE: 'require', DATABASE_SSL_CA_FILE: '/ca.pem' },
      RegExp(invalid('DATABASE_SSL_CA_FILE') + 'DATABASE_SSL_MODE=require does not check')],
    [{ ...urls, DATABASE_SSL_MODE: 'verify-ca' },
      RegExp(invalid('DATABASE_SSL_CA_FILE') + 'required with DATABASE_SSL_MODE=verify-ca')],
    [{ DATABASE_SSL_MODE: 'verify-full' },
      RegExp(invalid('DATABASE_SSL_MODE') + 'the embedded database does not use TLS')],
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { loadConfig(env); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, JSON.stringify(env))
    t.match((error as Error).message, message)
    t.notMatch((error as Error).message, /\n/, 'one line')
    t.notMatch((error as Error).message, /secret/, 'passwords are not echoed')
  }
})

t.test('database TLS: a missing, unreadable or non-PEM CA file stops start-up with one line', async (t) => {
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const path = await import('node:path')
  const { databaseTls } = await import('../src/db/tls.ts')
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-config-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const notPem = path.join(dir, 'not.pem')
  await writeFile(notPem, 'hello\n')
  const invalid = '^invalid environment variable DATABASE_SSL_CA_FILE: '
  const cases: Array<[string, RegExp]> = [
    [path.join(dir, 'missing.pem'), RegExp(invalid + 'cannot read .*missing\\.pem \\(no such file\\)$')],
    [dir, RegExp(invalid + 'cannot read .* \\(EISDIR\\)$')],
    [notPem, RegExp(invalid + '.*not\\.pem holds no PEM certificate$')],
  ]
  for (const [file, message] of cases) {
    const config = loadConfig({ ...urls, DATABASE_SSL_MODE: 'verify-full', DATABASE_SSL_CA_FILE: file })
    const error = (() => { try { databaseTls(config); return undefined } catch (e) { return e } })()
    t.type(error, ConfigError, file)
    t.match((error as Error).message, message)
  }
  t.same(databaseTls(loadConfig(urls)), { mode: 'disable' }, 'no file, nothing read')
})
