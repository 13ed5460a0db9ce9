import { describe, expect, it } from "vitest";
import { backoffDelay, resyncDelay } from "../../src/worker/backoff.js";

describe("backoffDelay", () => {
  const opts = { baseMs: 100, maxMs: 10_000 };

  it("doubles the nominal delay per attempt, starting at the base", () => {
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, opts, () => 1))).toEqual([100, 200, 400, 800]);
  });

  it("never exceeds the cap, however many attempts", () => {
    expect(backoffDelay(60, opts, () => 1)).toBe(10_000);
    expect(backoffDelay(10_000, opts, () => 1)).toBe(10_000);
  });

  it("jitters within the upper half of the nominal delay", () => {
    expect(backoffDelay(3, opts, () => 0)).toBe(200);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(3, opts);
      expect(d).toBeGreaterThanOrEqual(200);
      expect(d).toBeLessThanOrEqual(400);
    }
  });

  it("treats attempts below one as the first", () => {
    expect(backoffDelay(0, opts, () => 1)).toBe(100);
    expect(backoffDelay(-5, opts, () => 1)).toBe(100);
  });
});

describe("resyncDelay", () => {
  it("stays within ten percent of the period", () => {
    expect(resyncDelay(1_000, () => 0)).toBe(900);
    expect(resyncDelay(1_000, () => 1)).toBe(1_100);
  });
});
