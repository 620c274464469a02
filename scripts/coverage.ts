// Line coverage of src/ from the V8 coverage that `tap --no-disable-coverage` leaves in .tap/coverage/, checked
// against a floor: `tsx scripts/coverage.ts --min-lines N` (npm run coverage runs the suite, then this).
// tap's own report (c8) is unusable here: tsx emits whitespace-minified JavaScript, a few lines per file, and
// c8 maps coverage line by line of that output, so every loaded file reads 100%. This maps each V8 range
// through tsx's source map offset by offset instead; a source line counts as covered when code on it ran
// (c8's rule), and files no test loaded count with every line uncovered.
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import ts from 'typescript'

interface V8Range { startOffset: number, endOffset: number, count: number }
interface V8Script { url: string, functions: Array<{ ranges: V8Range[] }> }
interface SourceMapEntry { lineLengths?: number[], data?: { mappings: string } | null }
interface CoverageFile { result?: V8Script[], 'source-map-cache'?: Record<string, SourceMapEntry> }

const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

/** Source map `mappings` → per generated line, [generated column, original line] of each mapped segment. */
function decodeMappings (mappings: string): Array<Array<[number, number]>> {
  const lines: Array<Array<[number, number]>> = []
  let originalLine = 0
  for (const line of mappings.split(';')) {
    const segments: Array<[number, number]> = []
    let column = 0
    for (const segment of line.split(',')) {
      if (segment === '') continue
      const fields: number[] = []
      let value = 0
      let shift = 0
      for (const char of segment) {
        const digit = BASE64.indexOf(char)
        value += (digit & 31) << shift
        if ((digit & 32) !== 0) {
          shift += 5
          continue
        }
        fields.push((value & 1) === 1 ? -(value >>> 1) : value >>> 1)
        value = 0
        shift = 0
      }
      column += fields[0] ?? 0
      if (fields.length >= 4) {
        originalLine += fields[2]!
        segments.push([column, originalLine])
      }
    }
    lines.push(segments)
  }
  return lines
}

/** [generated offset, original line] of every mapped segment, cached: every process maps a file the same way. */
const segmentCache = new Map<string, Array<[number, number]>>()
function segmentsOf (url: string, entry: Required<SourceMapEntry>): Array<[number, number]> {
  const key = `${url}\n${entry.data!.mappings}`
  let segments = segmentCache.get(key)
  if (segments === undefined) {
    segments = []
    let lineStart = 0
    const decoded = decodeMappings(entry.data!.mappings)
    for (const [index, length] of entry.lineLengths.entries()) {
      for (const [column, line] of decoded[index] ?? []) segments.push([lineStart + column, line])
      lineStart += length + 1
    }
    segmentCache.set(key, segments)
  }
  return segments
}

/** Per generated offset, the count of the innermost V8 range around it (smaller ranges painted last). */
function countsByOffset (script: V8Script, length: number): Int32Array {
  const counts = new Int32Array(length)
  const ranges = script.functions.flatMap((f) => f.ranges)
    .sort((a, b) => (b.endOffset - b.startOffset) - (a.endOffset - a.startOffset))
  for (const range of ranges) counts.fill(range.count, range.startOffset, Math.min(range.endOffset, length))
  return counts
}

/** Lines holding code, for a file no test loaded: those TypeScript's own emit maps back to. */
function codeLines (source: string): Set<number> {
  const output = ts.transpileModule(source, {
    compilerOptions: { sourceMap: true, module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2023 },
  })
  const map = JSON.parse(output.sourceMapText ?? '{"mappings":""}') as { mappings: string }
  return new Set(decodeMappings(map.mappings).flat().map(([, line]) => line))
}

async function sourceFiles (dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => path.join(e.parentPath, e.name))
}

async function main (): Promise<number> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: '.tap/coverage' },
      'min-lines': { type: 'string', default: '0' },
      files: { type: 'boolean', default: false },
    },
  })
  const srcDir = path.resolve('src')
  const srcPrefix = pathToFileURL(srcDir).href + '/'
  /** Per source file: line → whether any process ran code on it. */
  const lines = new Map<string, Map<number, boolean>>()
  const names = (await readdir(values.dir)).filter((n) => n.endsWith('.json'))
  for (const name of names) {
    const file = JSON.parse(await readFile(path.join(values.dir, name), 'utf8')) as CoverageFile
    for (const script of file.result ?? []) {
      if (!script.url.startsWith(srcPrefix) || !script.url.endsWith('.ts')) continue
      const entry = file['source-map-cache']?.[script.url]
      if (entry?.data == null || entry.lineLengths === undefined) continue
      const segments = segmentsOf(script.url, entry as Required<SourceMapEntry>)
      const length = entry.lineLengths.reduce((sum, n) => sum + n + 1, 0)
      const counts = countsByOffset(script, length)
      const filePath = decodeURIComponent(script.url.slice('file://'.length))
      let seen = lines.get(filePath)
      if (seen === undefined) lines.set(filePath, seen = new Map())
      for (const [offset, line] of segments) seen.set(line, (seen.get(line) ?? false) || (counts[offset] ?? 0) > 0)
    }
  }
  if (lines.size === 0) {
    console.error(`coverage: no coverage of src/ in ${values.dir} (run the tests with --no-disable-coverage first)`)
    return 1
  }
  for (const file of await sourceFiles(srcDir)) {
    if (lines.has(file)) continue
    lines.set(file, new Map([...codeLines(await readFile(file, 'utf8'))].map((line) => [line, false])))
  }
  const rows = [...lines].map(([file, seen]) => {
    const covered = [...seen.values()].filter(Boolean).length
    return { file: path.relative(process.cwd(), file), total: seen.size, covered }
  }).sort((a, b) => a.covered / (a.total || 1) - b.covered / (b.total || 1))
  const total = rows.reduce((sum, r) => sum + r.total, 0)
  const covered = rows.reduce((sum, r) => sum + r.covered, 0)
  const pct = (n: number, of: number): string => (of === 0 ? 100 : (100 * n) / of).toFixed(2)
  const shown = values.files ? rows : rows.slice(0, 5)
  console.log(`${values.files ? 'lines covered by file' : 'least covered'}:`)
  for (const r of shown) console.log(`  ${pct(r.covered, r.total).padStart(6)}%  ${r.covered}/${r.total}  ${r.file}`)
  const floor = Number(values['min-lines'])
  const summary = `coverage: ${pct(covered, total)}% of the ${total} lines of src/ ` +
    `(${rows.length} files) ran in the tests; the floor is ${floor}%`
  if (Number(pct(covered, total)) < floor) {
    console.error(`${summary}: below it`)
    return 1
  }
  console.log(summary)
  return 0
}

main().then((code) => { process.exitCode = code }, (error: unknown) => {
  console.error(`coverage: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  process.exitCode = 1
})
