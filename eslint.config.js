import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['node_modules/**', '.data/**', '.tap/**', 'dist/**', 'bench/results/**', 'src/db/schema.ts',
      'clients/typescript/src/schema.ts'],
  }),
  {
    // Long lines hide what changed in a diff and wrap badly in reviews; URLs cannot be broken.
    rules: { '@stylistic/max-len': ['error', { code: 120, ignoreUrls: true }] },
  },
]
