/** Small promise helpers shared by the loops. */

/**
 * Waits for `p` or for `signal` to abort, whichever comes first, without leaving a listener
 * behind on the (long-lived) signal. Rejections of `p` are swallowed: callers loop and retry.
 */
export function untilAborted(p: Promise<unknown>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const onAbort = () => resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      },
      () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      },
    );
  });
}

/** A plain delay. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}


/**
 * A wake-up flag for loops that sleep until poked (LISTEN, a token, a freed slot) or a time
 * passes. A wake with no one waiting is remembered until `reset()`, so a poke that lands
 * between "looked for work" and "went to sleep" is never lost.
 */
export class Wakeup {
  #pending = false;
  #waiter: (() => void) | null = null;

  /** Pokes the loop. */
  wake(): void {
    this.#pending = true;
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  /** Forgets earlier pokes; call right before looking for work. */
  reset(): void {
    this.#pending = false;
  }

  /** True when poked since the last `reset()`. */
  get pending(): boolean {
    return this.#pending;
  }

  /** Resolves on the next poke or after `ms` (never, for Infinity); at once if already poked. */
  wait(ms: number): Promise<void> {
    if (this.#pending) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const t = Number.isFinite(ms)
        ? setTimeout(() => {
            if (this.#waiter === done) this.#waiter = null;
            resolve();
          }, ms)
        : undefined;
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      this.#waiter = done;
    });
  }
}
