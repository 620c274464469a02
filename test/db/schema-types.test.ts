import { spawnSync } from 'node:child_process'
import { copyFile, mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { createTestDatabase } from '../helpers/db.ts'

t.test('src/db/schema.ts matches the migrated schema (regenerate with npm run db:codegen)', async (t) => {
  const db = await createTestDatabase(t)
  const dir = await mkdtemp(path.join(tmpdir(), 'rowfence-codegen-'))
  const out = path.join(dir, 'schema.ts')
  await copyFile('src/db/schema.ts', out)
  const result = spawnSync(path.resolve('node_modules/.bin/kysely-codegen'), [
    '--dialect', 'postgres', '--url', db.ownerUrl, '--exclude-pattern', 'schema_migrations',
    '--date-parser', 'string', '--out-file', out, '--log-level', 'error',
  ], { encoding: 'utf8' })
  t.equal(result.status, 0, result.stderr)
  t.equal(await readFile(out, 'utf8'), await readFile('src/db/schema.ts', 'utf8'), 'the committed types are current')
})
