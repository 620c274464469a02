import { spawn } from 'node:child_process'
import path from 'node:path'
import { TEST_EXPORT_SIGNING_KEY } from './app.ts'

export interface NpmRun { code: number | null, stdout: string, stderr: string }

/**
 * `npm run <script> -- <args>` as an operator runs it: a child process configured by the
 * environment (the two database URLs, the test apps' export signing key, then `env`), with its output and exit code.
 */
export function runNpmScript (
  script: string, args: string[], database: { ownerUrl: string, appUrl: string }, env: Record<string, string> = {}
): Promise<NpmRun> {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['run', '--silent', script, ...(args.length > 0 ? ['--', ...args] : [])], {
      cwd: path.resolve(import.meta.dirname, '../..'),
      env: {
        ...process.env,
        DATABASE_URL: database.ownerUrl,
        APP_DATABASE_URL: database.appUrl,
        NODE_ENV: 'test',
        ROWFENCE_TEST_DB: '',
        EXPORT_SIGNING_KEY: TEST_EXPORT_SIGNING_KEY,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    child.on('error', reject)
    child.on('close', (code) => { resolve({ code, stdout, stderr }) })
  })
}
