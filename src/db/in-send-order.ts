/**
 * Awaits two statements sent together (the connection pipelines them) and reports the first failure in
 * the order they were sent. When the first fails, the second's "current transaction is aborted" only
 * echoes it; with Promise.all, whichever rejection settles first in time wins, and that depends on how
 * many awaits each path has — the cause could be hidden behind its echo (a 422 reported as a 500).
 */
export async function inSendOrder<A, B> (first: Promise<A>, second: Promise<B>): Promise<[A, B]> {
  const [a, b] = await Promise.allSettled([first, second])
  if (a.status === 'rejected') throw a.reason
  if (b.status === 'rejected') throw b.reason
  return [a.value, b.value]
}
