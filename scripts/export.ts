// npm run export -- <tenant-id> [--out FILE]   (also --tenant ID, as before)
// An alias of `npx rowfence export` (src/cli/data.ts): the tenant's rows as signed NDJSON, a progress bar on stderr.
// To stdout, run it as `npm run -s export`: without -s, npm prints its banner on stdout too.
process.argv.splice(2, 0, 'export')
await import('../src/cli/main.ts')
