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

/**
 * A running count (of a download whose total is not known beforehand), on stderr. Shown only once the work
 * has taken `after` ms, so that a quick run prints nothing; then as the row progress is (a redrawn line in a
 * terminal, a line every two seconds outside one).
 */
export function countProgress (label: string, unit: string, after = 2000): Pick<Progress, 'update' | 'stop'> {
  const bar = new cliProgress.SingleBar({
    format: `${label} {value} ${unit}`,
    stream: process.stderr,
    noTTYOutput: true,
    notTTYSchedule: 2000,
  })
  let done = 0
  let started = false
  const timer = setTimeout(() => {
    started = true
    bar.start(0, done)
  }, after)
  timer.unref()
  return {
    update: (n) => {
      done = n
      if (started) bar.update(n)
    },
    stop: () => {
      clearTimeout(timer)
      if (!started) return
      started = false
      bar.stop()
    },
  }
}
