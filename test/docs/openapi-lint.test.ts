// The OpenAPI document passes Redocly's recommended rules (redocly.yaml): `npm run lint:openapi`, run here
// so that `npm test` fails on any lint error.
import t from 'tap'
import { lintDocument, type OpenApiDocument } from '../../scripts/openapi.ts'
import { buildTestApp } from '../helpers/app.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { runNpmScript } from '../helpers/npm.ts'

t.test('npm run lint:openapi finds no error in the document the server serves', async (t) => {
  const db = await createTestDatabase(t)
  const run = await runNpmScript('lint:openapi', [], db)
  t.equal(run.code, 0, 'redocly lint reports no error', { output: run.stdout + run.stderr })
  t.match(run.stdout + run.stderr, /Your API description is valid/)
})

t.test('the linter fails a document that breaks a rule', async (t) => {
  const { app } = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<OpenApiDocument>()
  const operation = document.paths['/v1/invoices']?.post as Record<string, unknown> | undefined
  t.ok(operation, 'POST /v1/invoices is documented')
  delete operation!.operationId
  const { status, report } = await lintDocument(document)
  t.not(status, 0, 'an operation without an operationId is an error')
  t.match(report, /error\s+operation-operationId/, 'reported as such')
})
