import cliProgress from 'cli-progress'

export interface Progress {
  start: (total: number) => void
  /** Rows done so far. */
  update: (done: number) => void
  /** Draws the final state (once) and lets the terminal go; safe to call again. */
  stop: () => void
}

/**
 * The progress bar of export and import, counting rows, on stderr (stdout carries the export, or the
 * result). Outside a terminal (a log, CI) it prints a line every two seconds and a last one.
 */
export function rowProgress (label: string): Progress {
  const bar = new cliProgress.SingleBar({
    format: `${label} {bar} {percentage}% | {value}/{total} rows | {eta_formatted} left`,
    stream: process.stderr,
    // The ETA averages the rate over the last 50 updates, so a slow table does not make it jump.
    etaBuffer: 50,
    noTTYOutput: true,
    notTTYSchedule: 2000,
  }, cliProgress.Presets.shades_classic)
  let started = false
  return {
    start: (total) => {
      started = true
      bar.start(total, 0)
    },
    update: (done) => { if (started) bar.update(done) },
    stop: () => {
      if (!started) return
      started = false
      bar.stop()
    },
  }
}
