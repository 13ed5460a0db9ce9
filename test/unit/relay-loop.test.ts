/**
 * The relay loop (its I/O injected): when it takes again at once and when it waits. Time is
 * vitest's fake clock, so "waits" is checked by advancing it, not by sleeping.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { startRelay } from "../../src/relay/relay.js";
import type { Logger } from "../../src/types.js";

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

type Round = { taken: number; dispatched: number; deferred: number; more: boolean; nextInMs: number | null };
const NONE: Round = { taken: 0, dispatched: 0, deferred: 0, more: false, nextInMs: null };

/** A relay whose rounds answer from `script` (then NONE), counting the calls. */
function scripted(script: Round[], pollIntervalMs = 1_000) {
  const calls: number[] = [];
  const relay = startRelay({
    log: silent,
    batchSize: 500,
    pollIntervalMs,
    async relayOnce() {
      calls.push(Date.now());
      return script.shift() ?? NONE;
    },
  });
  return { relay, calls };
}

/** Lets the loop's pending promises run without moving the clock. */
async function settle(): Promise<void> {
  await vi.advanceTimersByTimeAsync(0);
}

beforeEach(() => void vi.useFakeTimers());
afterEach(() => void vi.useRealTimers());

describe("the relay loop", () => {
  it("after a round that took a few rows and deferred none, waits for a wake-up instead of taking again at once", async () => {
    const { relay, calls } = scripted([{ taken: 1, dispatched: 1, deferred: 0, more: false, nextInMs: null }]);
    await settle();
    expect(calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(999);
    expect(calls, "no round before the poll interval").toHaveLength(1);
    relay.wake();
    await settle();
    expect(calls, "a wake-up starts the next round").toHaveLength(2);
    await relay.stop();
  });

  it("takes again at once after a full round, and after a round that deferred rows (which says when they come back)", async () => {
    const { relay, calls } = scripted([
      { taken: 500, dispatched: 500, deferred: 0, more: true, nextInMs: null },
      { taken: 3, dispatched: 1, deferred: 2, more: false, nextInMs: null },
      { taken: 0, dispatched: 0, deferred: 0, more: false, nextInMs: 20 },
    ]);
    await settle();
    expect(calls).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(19);
    expect(calls, "the deferred rows are not due yet").toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls, "a round when the deferred rows are due").toHaveLength(4);
    await relay.stop();
  });

  it("polls at its interval when nothing wakes it", async () => {
    const { relay, calls } = scripted([], 1_000);
    await settle();
    expect(calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toHaveLength(3);
    await relay.stop();
  });
});
