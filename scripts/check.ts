// npm run check
// An alias of `npx rowfence check` (src/cli/db.ts): the start-up safety checks on their own.
process.argv.splice(2, 0, 'check')
await import('../src/cli/main.ts')
