// The /docs page in a real browser (Chromium through playwright-core), opened over plain HTTP by a
// host name other than localhost, as a colleague would open http://server:3000/docs: it renders, its
// Authorize dialog keeps the key across a reload, and "Try it out" creates an invoice.
import { existsSync } from 'node:fs'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { buildTestApp, provisionTenant } from '../helpers/app.ts'

// Debian's package; CHROMIUM_PATH names another build.
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const HOST = 'rowfence-docs.test'
// Without these, Chromium's own background connections (updates, sync, QUIC probes) fail and stall
// on a network that reaches nothing outside. The host resolver sends HOST to our server.
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  `--host-resolver-rules=MAP ${HOST} 127.0.0.1`]

/** Closes the Authorize dialog (one Close button per scheme: any will do). */
async function closeDialog (page: Page): Promise<void> {
  await page.locator('.dialog-ux button.btn-done').first().click()
  await page.locator('.dialog-ux').waitFor({ state: 'detached' })
}

const required = (process.env.CI ?? '') !== '' || (process.env.REQUIRE_BROWSER ?? '') !== ''

if (!existsSync(CHROMIUM)) {
  if (required) t.fail(`the browser test needs Chromium at ${CHROMIUM} (CI or REQUIRE_BROWSER is set)`)
  else t.comment('chromium not installed: browser test not run')
} else {
  const ctx = await buildTestApp(t)
  const tenant = await provisionTenant(ctx)
  const address = new URL(await ctx.app.listen({ host: '127.0.0.1', port: 0 }))
  const origin = `http://${HOST}:${address.port}`
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60_000 })
  t.teardown(() => browser.close())
  const page: Page = await (await browser.newContext()).newPage()
  page.setDefaultTimeout(30_000)
  const failures: string[] = []
  page.on('requestfailed', (request) => { failures.push(`${request.url()}: ${request.failure()?.errorText}`) })

  t.test('the page renders every operation over plain HTTP, under its own title', async (t) => {
    await page.goto(`${origin}/docs`)
    await page.locator('.opblock').first().waitFor()
    t.equal(await page.title(), 'rowfence API')
    t.ok(await page.locator('.opblock').count() >= 30, 'every operation is listed')
    t.equal(await page.locator('#operations-invoices-createInvoice').count(), 1, 'operations by their operationId')
    t.same(failures, [], 'no script, style or document failed to load (none was upgraded to https)')
  })

  t.test('Authorize takes the bearer API key and keeps it across a reload', async (t) => {
    await page.locator('.auth-wrapper button.authorize').click()
    const apiKey = page.locator('.auth-container').filter({ hasText: 'apiKey' })
    await apiKey.locator('input').fill(tenant.key)
    await apiKey.locator('button.authorize').click()
    await apiKey.getByText('Logout').waitFor()
    await closeDialog(page)
    await page.reload()
    await page.locator('.opblock').first().waitFor()
    await page.locator('.auth-wrapper button.authorize.locked').waitFor()
    await page.locator('.auth-wrapper button.authorize').click()
    const remembered = page.locator('.auth-container').filter({ hasText: 'apiKey' })
    t.equal(await remembered.getByText('Authorized').count(), 1, 'still authorized after the reload')
    t.equal(await remembered.locator('input').count(), 0, 'no key to enter again')
    await closeDialog(page)
  })

  t.test('Try it out on createInvoice sends the example with our customer and shows the 201', async (t) => {
    // The example's customer_id cannot be one of this tenant's: create one and put its id in.
    const res = await fetch(`${origin.replace(HOST, '127.0.0.1')}/v1/customers`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tenant.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Docs customer' }),
    })
    t.equal(res.status, 201)
    const customer = await res.json() as { id: string }
    const operation = page.locator('#operations-invoices-createInvoice')
    await operation.locator('.opblock-summary').click()
    await operation.locator('.try-out__btn').click()
    const body = operation.locator('textarea.body-param__text')
    const example = JSON.parse(await body.inputValue()) as Record<string, unknown>
    t.match(example, { currency: 'EUR', lines: [{ quantity: 3 }] }, 'the documented example is the body')
    await body.fill(JSON.stringify({ ...example, customer_id: customer.id }, null, 2))
    await operation.locator('button.execute').click()
    const status = operation.locator('.live-responses-table tr.response .response-col_status').first()
    await status.waitFor()
    t.equal((await status.innerText()).trim(), '201', 'created')
    t.match(await operation.locator('.live-responses-table tr.response .response-col_description').first().innerText(),
      /"status": "draft"/, 'the new draft invoice is shown')
  })
}
