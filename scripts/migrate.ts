// npm run migrate
// An alias of `npx rowfence migrate` (src/cli/db.ts): applies sql/ as the owner.
process.argv.splice(2, 0, 'migrate')
await import('../src/cli/main.ts')
