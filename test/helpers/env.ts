/** What scripts/test.ts hands to every test process (as JSON in ROWFENCE_TEST_DB). */
export interface TestDatabaseEnv {
  /** A superuser (or CREATEROLE + CREATEDB) login on the test server. */
  adminUrl: string
  /** A migrated database that each test file clones. */
  template: string
  ownerRole: string
  ownerPassword: string
  appPassword: string
}

export function testDatabaseEnv (): TestDatabaseEnv {
  const raw = process.env.ROWFENCE_TEST_DB
  if (raw === undefined) {
    throw new Error('ROWFENCE_TEST_DB is not set: run the tests with `npm test` ' +
      '(scripts/test.ts prepares the database)')
  }
  return JSON.parse(raw) as TestDatabaseEnv
}
