// npm run -s token -- --user ID [--tenant TENANT_ID] [--ttl 1h]   (also --sub ID, as before)
// An alias of `npx rowfence token` (src/cli/token.ts). Without -s, npm prints its banner on stdout too:
// JWT=$(npx rowfence token ...) captures the token alone.
process.argv.splice(2, 0, 'token')
await import('../src/cli/main.ts')
