/**
 * The timing of a batched write (request counts, API keys' last use): `write` runs every `everyMs` and on
 * demand (flush, close), never two at once. A tick that finds the previous write still running (a slow or
 * unreachable database) is skipped rather than queued behind it.
 */
export class PeriodicFlush {
  readonly #write: () => Promise<void>
  #timer: NodeJS.Timeout | undefined
  #flushing: Promise<void> = Promise.resolve()
  #busy = false

  constructor (write: () => Promise<void>, everyMs: number, onError: (error: unknown) => void) {
    this.#write = write
    this.#timer = setInterval(() => {
      if (!this.#busy) this.flush().catch(onError)
    }, everyMs)
    this.#timer.unref()
  }

  /** Runs the write after the one under way, if any; its outcome goes to the caller. */
  async flush (): Promise<void> {
    this.#busy = true
    // After the previous write, whatever its outcome: that one's failure went to its own caller.
    const flushing = this.#flushing.catch(() => {}).then(() => this.#write())
    this.#flushing = flushing
    // Its outcome goes to the caller; this copy only notes the end.
    flushing.finally(() => { if (this.#flushing === flushing) this.#busy = false }).catch(() => {})
    return flushing
  }

  /** Stops the timer and writes what is left. */
  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.flush()
  }
}
