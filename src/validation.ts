import { Ajv, type ValidateFunction } from 'ajv'
import ajvFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'

/**
 * Two Ajv instances, because API.md wants two rules: JSON bodies are typed strictly ("5", true or
 * null where an integer is expected is a 400), while query strings, params and headers are text
 * and get parsed into their declared types. Unknown body properties are rejected, never dropped
 * silently and never stored.
 */
function makeAjv (coerceTypes: boolean | 'array'): Ajv {
  const ajv = new Ajv({
    coerceTypes,
    useDefaults: true,
    removeAdditional: false,
    allErrors: true,
    strict: false,
  })
  // ajv-formats is CommonJS: under NodeNext its default import is module.exports, whose .default is the plugin.
  ajvFormats.default(ajv)
  return ajv
}

const strictAjv = makeAjv(false)
const textAjv = makeAjv('array')

export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  const ajv = httpPart === 'body' ? strictAjv : textAjv
  return ajv.compile(schema as object) as ValidateFunction
}
