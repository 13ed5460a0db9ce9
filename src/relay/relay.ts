/**
 * The relay: moves outbox rows onto NATS as tokens. Wakes on LISTEN, polls as a backstop, and
 * keeps going while batches come back full. Its I/O is injected.
 */
import { coerceError } from "../errors.js";
import type { Logger } from "../types.js";
import { sleep, untilAborted, Wakeup } from "../async.js";

/** Injected I/O of the relay. */
export interface RelayDeps {
  log: Logger;
  batchSize: number;
  pollIntervalMs: number;
  /**
   * One take-publish-delete round; `more` when rows may be left. After a round that took
   * nothing, `nextInMs` says when the next row becomes available (null: none; the poll is the
   * backstop). A round that took rows is followed by another at once.
   */
  relayOnce(): Promise<{ taken: number; dispatched: number; deferred: number; more: boolean; nextInMs: number | null }>;
}

/** A running relay. */
export interface Relay {
  /** Nudge: new outbox rows were committed. */
  wake(): void;
  /** Relays until the outbox has nothing available; for tests and one-shot tools. */
  drainOnce(): Promise<number>;
  stop(): Promise<void>;
}

/** Starts the relay loop. */
export function startRelay(deps: RelayDeps): Relay {
  const stopper = new AbortController();
  const wakeup = new Wakeup();
  const loop = (async () => {
    let failures = 0;
    while (!stopper.signal.aborted) {
      wakeup.reset();
      let again = false;
      let next: number | null = null;
      try {
        const r = await deps.relayOnce();
        again = r.more || r.taken > 0;
        next = r.nextInMs;
        if (failures > 0) deps.log.info("relay:recovered", { afterFailures: failures });
        failures = 0;
      } catch (err) {
        failures++;
        const delay = Math.min(5_000, 50 * 2 ** Math.min(failures, 7));
        if (failures === 1 || failures % 20 === 0) deps.log.warn("relay:error", { retryInMs: delay, err: coerceError(err).message });
        await untilAborted(sleep(delay), stopper.signal);
        continue;
      }
      if (again || wakeup.pending) continue;
      const wait = next === null ? deps.pollIntervalMs : Math.min(deps.pollIntervalMs, Math.max(1, next));
      await untilAborted(wakeup.wait(wait, stopper.signal), stopper.signal);
    }
  })();
  return {
    wake: () => wakeup.wake(),
    async drainOnce() {
      let total = 0;
      for (;;) {
        const r = await deps.relayOnce();
        total += r.dispatched;
        if (!r.more) return total;
      }
    },
    async stop() {
      stopper.abort();
      wakeup.wake();
      await loop;
    },
  };
}
