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

  /**
   * Resolves on the next poke, after `ms` (never, for Infinity) or when `signal` aborts; at once
   * if already poked. Leaves no timer behind once resolved.
   */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.#pending || signal?.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const t = Number.isFinite(ms) ? setTimeout(() => done(), ms) : undefined;
      const done = () => {
        clearTimeout(t);
        signal?.removeEventListener("abort", done);
        if (this.#waiter === done) this.#waiter = null;
        resolve();
      };
      signal?.addEventListener("abort", done, { once: true });
      this.#waiter = done;
    });
  }
}

/**
 * The cancellation of one run. An `AbortController` costs more to create than a trivial run
 * costs in all (its `AbortSignal` is an EventTarget), so the controller is made only when the
 * run reads `ctx.signal`; the engine itself waits on the one `onAbort` slot.
 */
export class RunAbort {
  #aborted = false;
  #reason: unknown = undefined;
  #controller: AbortController | undefined;
  #listener: ((reason: unknown) => void) | undefined;

  /** True once `abort` was called. */
  get aborted(): boolean {
    return this.#aborted;
  }

  /** What `abort` was called with. */
  get reason(): unknown {
    return this.#reason;
  }

  /** A standard signal that follows this abort (made on first read). */
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  /** Aborts once; later calls are ignored. */
  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.(reason);
  }

  /** Sets the one listener called on abort (undefined clears it). */
  onAbort(listener: ((reason: unknown) => void) | undefined): void {
    this.#listener = listener;
  }
}
