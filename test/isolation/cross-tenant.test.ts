// Attacks across tenants on a direct connection (see ./attacks.ts; the same attacks run through
// PgBouncer in test/reliability/pgbouncer.test.ts).
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { crossTenantAttacks } from './attacks.ts'

await crossTenantAttacks(t, await buildTestApp(t))
