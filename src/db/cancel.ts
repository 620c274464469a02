import { connect } from 'node:net'
import type pg from 'pg'

/**
 * Asks PostgreSQL to cancel whatever a connection is running (the protocol's CancelRequest, sent on a
 * short-lived connection of its own: no pool slot, no authentication, works through PgBouncer).
 * Used when a client disconnects or a request outlives its deadline, so that its query stops holding
 * a backend and a pooled connection. Best effort: never throws.
 */
export function cancelRunningQuery (client: pg.ClientBase): void {
  const c = client as unknown as { processID?: number, secretKey?: number, host?: string, port?: number }
  if (c.processID === undefined || c.secretKey === undefined) return
  const message = Buffer.alloc(16)
  message.writeInt32BE(16, 0)
  message.writeInt32BE(80877102, 4) // the CancelRequest code
  message.writeInt32BE(c.processID, 8)
  message.writeInt32BE(c.secretKey, 12)
  const host = c.host ?? 'localhost'
  const port = c.port ?? 5432
  const socket = host.startsWith('/') ? connect({ path: `${host}/.s.PGSQL.${port}` }) : connect({ host, port })
  socket.setTimeout(2000, () => socket.destroy())
  // Nothing to do if the cancel cannot be sent: the statement runs into statement_timeout, and the
  // connection is discarded at release either way.
  socket.on('error', () => {})
  socket.on('connect', () => { socket.end(message) })
}
