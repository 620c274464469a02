// npm run import -- <FILE> [--placement pooled|dedicated] [--allow-unsigned]   (also --file FILE)
// An alias of `npx rowfence import` (src/cli/data.ts): loads an export into this deployment.
process.argv.splice(2, 0, 'import')
await import('../src/cli/main.ts')
