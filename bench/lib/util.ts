/** Small shared helpers: the clock, sleeping, timeouts and resource scopes. */

/**
 * Milliseconds since the Unix epoch with sub-millisecond resolution, comparable between the
 * processes of one machine.
 *
 * `performance.timeOrigin` is the wall-clock time at which this process started (high
 * resolution) and `performance.now()` is monotonic since then, so two processes disagree only
 * by how far the monotonic clock drifted from the wall clock since each one started
 * (microseconds over a benchmark) plus the rounding of `timeOrigin`. `Date.now()` has only
 * 1 ms resolution and can jump with NTP steps, which is why it is not used. The remaining
 * offset is measured per child by `WorkerProcess.calibrateClock()` and subtracted.
 */
export function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Thrown when a benchmark step takes longer than its budget. The message says what waited. */
export class TimeoutError extends Error {
  override name = "TimeoutError";
}

/**
 * Races `promise` against a timer; on expiry rejects with a {@link TimeoutError} whose message
 * is `what` plus the optional `detail()` (e.g. progress so far).
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  detail?: () => string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const extra = detail ? `; ${detail()}` : "";
      reject(new TimeoutError(`timed out after ${ms} ms waiting for ${what}${extra}`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Collects clean-up actions of one measurement (kill workers, close producers, drop the
 * database) and runs them in reverse order exactly once, whether the measurement finished,
 * failed or timed out. A clean-up that throws is reported and does not stop the others.
 */
export class Scope {
  private readonly cleanups: Array<{ what: string; fn: () => Promise<void> | void }> = [];
  private closed = false;
  private currentStep = "setting up";

  private constructor(private readonly parent?: Scope) {}

  /** A top-level scope (one per measurement). */
  static root(): Scope {
    return new Scope();
  }

  /**
   * A scope for one part of a measurement: close it when the part is done to release its
   * resources early; if the parent closes first (timeout), it closes the child too.
   */
  child(): Scope {
    const child = new Scope(this);
    this.defer("close inner scope", () => child.close());
    return child;
  }

  /** What the measurement is doing now; named in its timeout message. Shared with the parent. */
  get step(): string {
    return this.currentStep;
  }
  set step(text: string) {
    this.currentStep = text;
    if (this.parent) this.parent.step = text;
  }

  /** Registers `fn` to run when the scope closes. If it is already closed, runs it now. */
  defer(what: string, fn: () => Promise<void> | void): void {
    if (this.closed) {
      void Promise.resolve()
        .then(fn)
        .catch((err) => warn(`clean-up "${what}" failed: ${errorText(err)}`));
      return;
    }
    this.cleanups.push({ what, fn });
  }

  /** True once {@link Scope.close} started: long waits use it to give up early. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Runs every registered clean-up, newest first. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.cleanups.length > 0) {
      const { what, fn } = this.cleanups.pop()!;
      try {
        await fn();
      } catch (err) {
        warn(`clean-up "${what}" failed: ${errorText(err)}`);
      }
    }
  }
}

/** The message of an unknown thrown value. */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Progress line on stderr (stdout stays free for the final summary). */
export function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

/** Warning line on stderr. */
export function warn(message: string): void {
  process.stderr.write(`[bench] WARNING: ${message}\n`);
}
