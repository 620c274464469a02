import path from 'node:path'
import type { Config } from '../config.ts'
import { readOrCreateSecretFile } from '../ops/embedded.ts'

/** What the webhook routes and the delivery job need from the configuration. */
export interface WebhookSettings {
  /** WEBHOOK_SECRET_KEY as text (base64 of 32 bytes); undefined: endpoints cannot be created nor delivered to. */
  secretKey: string | undefined
  allowPrivateTargets: boolean
  connectTimeoutMs: number
  timeoutMs: number
  maxAttempts: number
  retryBaseMs: number
  disableAfterMs: number
  secretGraceMs: number
}

export function webhookSettings (config: Config): WebhookSettings {
  return {
    secretKey: config.WEBHOOK_SECRET_KEY,
    allowPrivateTargets: config.WEBHOOK_ALLOW_PRIVATE_TARGETS,
    connectTimeoutMs: config.WEBHOOK_CONNECT_TIMEOUT_MS,
    timeoutMs: config.WEBHOOK_TIMEOUT_MS,
    maxAttempts: config.WEBHOOK_MAX_ATTEMPTS,
    retryBaseMs: config.WEBHOOK_RETRY_BASE_MS,
    disableAfterMs: config.WEBHOOK_DISABLE_AFTER_MS,
    secretGraceMs: config.WEBHOOK_SECRET_GRACE_MS,
  }
}

/**
 * WEBHOOK_SECRET_KEY as configured or, outside production, generated once into DATA_DIR (like the
 * export signing key), so that `npm start` delivers webhooks with no setup. A lost key makes every
 * stored signing secret unreadable: back it up with the database.
 */
export async function resolveWebhookSecretKey (
  config: Pick<Config, 'WEBHOOK_SECRET_KEY' | 'NODE_ENV' | 'DATA_DIR'>
): Promise<string | undefined> {
  if (config.WEBHOOK_SECRET_KEY !== undefined) return config.WEBHOOK_SECRET_KEY
  if (config.NODE_ENV === 'production') return undefined
  return readOrCreateSecretFile(path.resolve(config.DATA_DIR, 'webhook-secret-key'))
}
