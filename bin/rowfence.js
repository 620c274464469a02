#!/usr/bin/env node
// The `rowfence` command (package.json "bin"): runs the TypeScript CLI, src/cli/main.ts, through tsx in
// this same process, so that arguments, standard streams, signals and the exit code are the CLI's own.
// tsx is resolved from this package, wherever the command is started from. An install without tsx or
// the sources (the image's production install) runs the compiled CLI, dist/cli/main.js (npm run build).
import { access } from 'node:fs/promises'

const sources = new URL('../src/cli/main.ts', import.meta.url)
const compiled = new URL('../dist/cli/main.js', import.meta.url)

async function tsx () {
  try {
    return await import('tsx/esm/api')
  } catch (error) {
    if (error.code === 'ERR_MODULE_NOT_FOUND') return undefined
    throw error
  }
}

// Only a missing file means "not there": any other error (a permission) is reported as it is.
const exists = (url) => access(url).then(() => true, (error) => {
  if (error.code === 'ENOENT') return false
  throw error
})
const loader = await exists(sources) ? await tsx() : undefined
if (loader !== undefined) {
  loader.register()
  await import(sources.href)
} else if (await exists(compiled)) {
  await import(compiled.href)
} else {
  process.stderr.write('rowfence: needs tsx and src/ (npm install), or the compiled dist/ (npm run build)\n')
  process.exitCode = 1
}
