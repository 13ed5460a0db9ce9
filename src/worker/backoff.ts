/**
 * Per-identity retry backoff: exponential, capped, with full jitter on the upper half so that
 * identities failing together do not retry together. Pure; the store keeps only the due time.
 */

/** Backoff settings; all in milliseconds. */
export interface BackoffOptions {
  /** Delay before the first retry. */
  baseMs: number;
  /** Longest delay between retries. */
  maxMs: number;
}

/**
 * The delay before retry number `attempt` (1 = the first retry after one failure):
 * `min(maxMs, baseMs · 2^(attempt-1))`, then a uniformly random point in its upper half
 * (`[d/2, d]`), so the delay never shrinks below half the nominal value nor exceeds the cap.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number = Math.random): number {
  const n = Math.max(1, Math.floor(attempt));
  const nominal = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.min(n - 1, 52));
  return Math.round(nominal / 2 + random() * (nominal / 2));
}

/**
 * A jittered resync delay in `[0.9·period, 1.1·period]`, so matters created together do not
 * resync together forever.
 */
export function resyncDelay(periodMs: number, random: () => number = Math.random): number {
  return Math.round(periodMs * (0.9 + 0.2 * random()));
}
