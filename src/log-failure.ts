/** Where a best-effort step reports its failure: a Fastify (pino) logger, or anything with its `warn`. */
export interface FailureLog {
  warn: (details: Record<string, unknown>, message: string) => void
}

/**
 * The catch handler of a step whose failure is deliberately not fatal: it logs the error at warn with
 * what was being done, and resolves, so that the caller goes on as it would after the step succeeded.
 * `log` may be undefined where a caller chose not to be told (a script, a test).
 */
export function logFailure (
  log: FailureLog | undefined, what: string, details: Record<string, unknown> = {}
): (error: unknown) => void {
  return (error) => { log?.warn({ ...details, err: error }, `${what} failed`) }
}

/**
 * A FailureLog for callers that report in lines (start-up's output, a CLI's stderr): the message, the
 * details as key=value and the error's message on one line.
 */
export function lineFailureLog (log: (line: string) => void): FailureLog {
  return {
    warn: ({ err, ...details }, message) => {
      const context = Object.entries(details).map(([key, value]) => `${key}=${String(value)}`).join(' ')
      const why = err instanceof Error ? err.message : String(err)
      log(`${message}${context === '' ? '' : ` (${context})`}: ${why}`)
    },
  }
}
