// npm run db:setup -- --admin-url postgres://postgres@host/postgres [--database rowfence] [--url-safe-passwords]
// Creates the owner role, the runtime role `app` and the database on a real server, then migrates.
// The work is src/ops/setup-cli.ts, so that the image runs the same code compiled (node dist/ops/setup-cli.js).
import { runSetupCli } from '../src/ops/setup-cli.ts'

runSetupCli(process.argv.slice(2))
