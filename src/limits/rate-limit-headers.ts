/**
 * The RateLimit-Policy and RateLimit response fields of the IETF draft "RateLimit header fields for HTTP"
 * (draft-ietf-httpapi-ratelimit-headers), as its revision -11 (May 2026) defines them: both are Structured
 * Field Lists (RFC 9651) whose members are Strings naming a policy. A policy carries its quota `q` and
 * window `w` in seconds; a service limit carries the quota still available `r` and the effective window `t`
 * in seconds, within which the client may use no more than `r`:
 *
 *   RateLimit-Policy: "burst";q=200;w=1, "sustained";q=6000;w=60
 *   RateLimit: "burst";r=199;t=1, "sustained";r=5999;t=60
 *
 * Why these names and not others: -11 is the last revision whose text we could read. The working group
 * was discussing renaming `r` and `t` (to `a` and `w`) and allowing Tokens for policy names; should a
 * later revision do so, only this file changes. The older three fields (RateLimit-Limit, -Remaining,
 * -Reset) were dropped by the draft in 2023 and are not sent.
 */

/** A rate limit as counted: at most `quota` requests in each fixed window of `windowSeconds`. */
export interface RatePolicy {
  name: string
  quota: number
  windowSeconds: number
}

/** Where one policy stands after a request: what is left, and in how many seconds its window ends. */
export interface PolicyState {
  policy: RatePolicy
  remaining: number
  resetSeconds: number
}

/** The largest Integer a Structured Field may carry (RFC 9651, section 3.3.1). */
const SF_INTEGER_MAX = 999_999_999_999_999
const POLICY_NAME = /^[a-z][a-z0-9_-]{0,63}$/

function sfString (value: string): string {
  // Our policy names are fixed lower-case words: nothing to escape, and a name that would need it is a bug.
  if (!POLICY_NAME.test(value)) throw new TypeError(`not a policy name: ${JSON.stringify(value)}`)
  return `"${value}"`
}

function sfInteger (value: number): string {
  return String(Math.min(Math.max(0, Math.floor(value)), SF_INTEGER_MAX))
}

/** The RateLimit-Policy field value: every policy applied, with its quota and window. */
export function rateLimitPolicyField (policies: readonly RatePolicy[]): string {
  return policies.map((p) => `${sfString(p.name)};q=${sfInteger(p.quota)};w=${sfInteger(p.windowSeconds)}`)
    .join(', ')
}

/** The RateLimit field value: for each policy, the requests left and the seconds until its window ends. */
export function rateLimitField (states: readonly PolicyState[]): string {
  return states.map((s) => `${sfString(s.policy.name)};r=${sfInteger(s.remaining)};t=${sfInteger(s.resetSeconds)}`)
    .join(', ')
}

/** Both fields, as response headers (lower case, as Fastify keeps them). */
export function rateLimitHeaders (states: readonly PolicyState[]): Record<string, string> {
  if (states.length === 0) return {}
  return {
    'ratelimit-policy': rateLimitPolicyField(states.map((s) => s.policy)),
    ratelimit: rateLimitField(states),
  }
}
