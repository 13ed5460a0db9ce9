import { describe, expect, it, vi } from "vitest";
import { createSwitchingSource, createTokenSource, OFFER_TTL_MS } from "../../src/worker/sources.js";
import type { Token } from "../../src/nats/tokens.js";
import type { ClaimStatus } from "../../src/store/claim.js";
import type { Logger } from "../../src/types.js";

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

/** A batch message's tokens, recording how each was settled. */
function batch(size: number, from: number, settled: Map<string, string>): Token[] {
  return Array.from({ length: size }, (_, i) => {
    const identity = `i${from + i}`;
    return {
      kind: "k",
      identity,
      batched: true,
      origin: { row: from + i + 1, bumps: 0 },
      ack: () => void settled.set(identity, "ack"),
      nak: (ms: number) => void settled.set(identity, `nak ${ms}`),
      working: () => {},
    };
  });
}

describe("a token source", () => {
  it("hands back whole batches that arrive beyond twice its room, and then asks for as many messages as batches fit", async () => {
    const asked: number[] = [];
    const settled = new Map<string, string>();
    let delivered!: () => void;
    const allDelivered = new Promise<void>((r) => (delivered = r));
    const source = createTokenSource({
      kind: "k",
      log: silent,
      expiresMs: 1_000,
      // A pull answered with three batches of 30 (more than asked for: what a pull for many
      // messages brings when a backlog turns into batches).
      async *fetch(max) {
        asked.push(max);
        for (let m = 0; m < 3; m++) yield batch(30, m * 30, settled);
        delivered();
      },
      claim: async (keys) => keys.map((): ClaimStatus => ({ status: "idle" })),
    });
    expect(await source.take(10)).toEqual([]);
    expect(asked).toEqual([10]);
    await allDelivered;
    // The first batch is kept (the queue was empty); the next two arrive with 30 tokens queued
    // for a room of 10, and go back untouched.
    expect([...settled.keys()].sort()).toEqual(Array.from({ length: 60 }, (_, i) => `i${30 + i}`).sort());
    expect(new Set(settled.values())).toEqual(new Set(["nak 0"]));
    await source.take(10);
    expect([...Array(10).keys()].map((i) => settled.get(`i${i}`))).toEqual(Array(10).fill("ack"));
    // 20 queued, room for 90 more: 70 tokens are three messages of 30, not 70 messages.
    await source.take(90);
    expect(asked).toEqual([10, 3]);
    await source.close();
  });
});

describe("a token source whose queued tokens all turn out idle", () => {
  it("has a pull out before it waits, so that a token published meanwhile is not left to the pull expiry", async () => {
    const asked: number[] = [];
    const settled = new Map<string, string>();
    let first = true;
    const source = createTokenSource({
      kind: "k",
      log: silent,
      expiresMs: 60_000,
      // The first pull brings one batch of 4 (more than the room of 2); later pulls stay open.
      async *fetch(max, _expiresMs, signal) {
        asked.push(max);
        if (first) {
          first = false;
          yield batch(4, 0, settled);
          return;
        }
        await new Promise<void>((resolve) => signal?.addEventListener("abort", () => resolve(), { once: true }));
      },
      claim: async (keys) => keys.map((): ClaimStatus => ({ status: "idle" })),
    });
    const signal = new AbortController().signal;
    expect(await source.take(2)).toEqual([]);
    await source.ready(signal);
    // The batch is queued; these takes find no free room, so they ask for nothing more.
    await source.take(2);
    await source.take(2);
    expect([...settled.values()]).toEqual(["ack", "ack", "ack", "ack"]);
    expect(asked).toHaveLength(1);
    // Nothing queued now: before waiting for news, the source must have a pull out.
    const ready = source.ready(signal);
    expect(asked, "a pull is asked for before the wait").toHaveLength(2);
    await source.close();
    await ready;
  });
});


describe("a switching source offered announced outbox rows", () => {
  /** Stand-ins for the two sources: the outbox one records each take's size. */
  function sources() {
    const outboxTakes: number[] = [];
    let tokenReady!: () => void;
    const tokens = {
      take: async () => [],
      ready: () => new Promise<void>((r) => (tokenReady = r)),
      wake: () => tokenReady?.(),
      inject() {},
      restartPulls() {},
      close: async () => {},
    };
    const outbox = {
      take: async (max: number) => {
        outboxTakes.push(max);
        return [];
      },
      ready: () => new Promise<void>(() => {}),
      wake() {},
      inject() {},
      close: async () => {},
    };
    return { tokens, outbox, outboxTakes };
  }

  it("accepts them only while its runner waits for tokens, and then takes at most that many from the outbox once", async () => {
    const { tokens, outbox, outboxTakes } = sources();
    const source = createSwitchingSource("k", tokens, outbox, () => false);
    let settled = 0;
    // Not waiting (the runner is busy): declined, the rows go the token way.
    expect(source.offer(3, () => settled++)).toBe(false);
    const waiting = source.ready(new AbortController().signal);
    expect(source.offer(3, () => settled++)).toBe(true);
    // One offer at a time.
    expect(source.offer(2, () => settled++)).toBe(false);
    await waiting;
    expect(settled).toBe(0);
    await source.take(100);
    expect(outboxTakes).toEqual([3]);
    expect(settled).toBe(1);
    // The next take is a token take again.
    await source.take(100);
    expect(outboxTakes).toEqual([3]);
    // A room smaller than the offer bounds the take.
    const again = source.ready(new AbortController().signal);
    expect(source.offer(8, () => settled++)).toBe(true);
    await again;
    await source.take(2);
    expect(outboxTakes).toEqual([3, 2]);
    expect(settled).toBe(2);
    await source.close();
  });

  it("declines them while dispatching through Postgres, and settles an offer it will never take when it closes", async () => {
    const { tokens, outbox, outboxTakes } = sources();
    let postgres = true;
    const source = createSwitchingSource("k", tokens, outbox, () => postgres);
    void source.ready(new AbortController().signal);
    expect(source.offer(1, () => {})).toBe(false);
    postgres = false;
    source.modeChanged();
    void source.ready(new AbortController().signal);
    let settled = 0;
    expect(source.offer(1, () => settled++)).toBe(true);
    await source.close();
    expect(settled).toBe(1);
    expect(outboxTakes).toEqual([]);
  });
});

describe("a switching source's offer that its runner does not take up", () => {
  it("lapses after OFFER_TTL_MS, settles once even when the take comes later, and leaves the next take to tokens", async () => {
    vi.useFakeTimers();
    try {
      const outboxTakes: number[] = [];
      let finishTake!: () => void;
      const tokens = { take: async () => [], ready: () => new Promise<void>(() => {}), wake() {}, inject() {}, restartPulls() {}, close: async () => {} };
      const outbox = {
        take: (max: number) => {
          outboxTakes.push(max);
          return new Promise<never[]>((r) => (finishTake = () => r([])));
        },
        ready: () => new Promise<void>(() => {}),
        wake() {},
        inject() {},
        close: async () => {},
      };
      const source = createSwitchingSource("k", tokens, outbox, () => false);
      let settled = 0;
      void source.ready(new AbortController().signal);
      expect(source.offer(2, () => settled++)).toBe(true);
      await vi.advanceTimersByTimeAsync(OFFER_TTL_MS);
      expect(settled).toBe(1);
      // The runner's take after the lapse is a token take.
      await source.take(10);
      expect(outboxTakes).toEqual([]);
      // A take that outlasts the TTL settles its offer once, when it ends.
      void source.ready(new AbortController().signal);
      expect(source.offer(2, () => settled++)).toBe(true);
      const taking = source.take(10);
      await vi.advanceTimersByTimeAsync(OFFER_TTL_MS * 3);
      expect(settled).toBe(1);
      finishTake();
      await taking;
      expect(settled).toBe(2);
      expect(outboxTakes).toEqual([2]);
      await source.close();
      expect(settled).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it("ends the token source's wait with its own, so no pull-expiry timer outlives an offer", async () => {
    vi.useFakeTimers();
    try {
      const tokens = createTokenSource({
        kind: "k",
        log: silent,
        expiresMs: 60_000,
        async *fetch(_max, _expiresMs, signal) {
          await new Promise<void>((resolve) => signal?.addEventListener("abort", () => resolve(), { once: true }));
        },
        claim: async () => [],
      });
      const outbox = { take: async () => [], ready: () => new Promise<void>(() => {}), wake() {}, inject() {}, close: async () => {} };
      const source = createSwitchingSource("k", tokens, outbox, () => false);
      const pulls = vi.getTimerCount();
      for (let i = 0; i < 5; i++) {
        const waiting = source.ready(new AbortController().signal);
        expect(source.offer(1, () => {})).toBe(true);
        await waiting;
        await source.take(10);
      }
      // Only the pull's own give-up timer (one pull out) is left, not one wait timer per offer.
      expect(vi.getTimerCount()).toBeLessThanOrEqual(pulls + 1);
      await source.close();
    } finally {
      vi.useRealTimers();
    }
  });
});
