import type { FastifyBaseLogger } from 'fastify'
import { Logger } from 'graphile-worker'

/**
 * The job queue library's log lines, in ours: its warnings and errors always, its info and debug
 * lines only at debug level (it narrates every poll). Its scope (worker, task, job id) becomes fields.
 */
export function queueLogger (log: FastifyBaseLogger): Logger {
  return new Logger((scope) => (level, message, meta) => {
    const fields = { queue: scope, ...(meta ?? {}) }
    if (level === 'error') log.error(fields, message)
    else if (level === 'warning') log.warn(fields, message)
    else log.debug(fields, message)
  })
}

/** For the migrator, which speaks in lines: only what went wrong. */
export function lineQueueLogger (line: (text: string) => void): Logger {
  return new Logger(() => (level, message) => {
    if (level === 'error' || level === 'warning') line(`job queue: ${message}`)
  })
}
