/**
 * Condition polling with a deadline: the only way `chaos/lib` waits. A fixed sleep is either too
 * short on a loaded 2-core machine (flaky) or too long everywhere else (slow); a polled condition
 * is neither.
 */
import { setTimeout as delay } from "node:timers/promises";
import { WaitTimeoutError } from "./errors.js";

/** Options of {@link waitFor}. */
export interface WaitOptions {
  /** What is being waited for, as a noun phrase; it completes the timeout message. */
  description: string;
  /** Give up after this long. Defaults to 10 000 ms. */
  timeoutMs?: number;
  /**
   * Pause between two probes. Defaults to 50 ms: short next to a server's start-up time, long
   * enough that polling does not compete for the CPU with the server it waits for.
   */
  intervalMs?: number;
  /**
   * Checked before every probe. Returning an error stops the wait at once with that error, so a
   * server that already exited fails fast instead of after the whole deadline.
   */
  fatal?: () => Error | undefined;
}

/**
 * Polls `probe` until it returns a value other than `undefined` or `false`, and returns that
 * value. A probe that throws counts as "not yet"; its last error becomes the `cause` of the
 * {@link WaitTimeoutError} thrown at the deadline.
 */
export async function waitFor<T>(
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  options: WaitOptions,
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const fatal = options.fatal?.();
    if (fatal) throw fatal;
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new WaitTimeoutError(options.description, timeoutMs, { cause: lastError });
    await delay(Math.min(intervalMs, left));
  }
}
