// Many tenants through a pool of two connections: each pooled connection serves every tenant in
// turn, so a binding that outlived its transaction would show in the next tenant's response.
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { interleavedTenants } from './attacks.ts'

interleavedTenants(
  t,
  await buildTestApp(t, { DB_POOL_MAX: 2, DB_POOL_QUEUE_MAX: 1000, DB_CONNECT_TIMEOUT_MS: 10_000 }),
  'thousands of interleaved requests of many tenants over a pool of two connections: each sees only its own'
)
