import { describe, expect, it } from "vitest";
import { RunAbort } from "../../src/async.js";

describe("RunAbort", () => {
  it("hands out a signal that is already aborted, with the reason, when read after the abort", () => {
    const abort = new RunAbort();
    const reason = new Error("lease lost");
    abort.abort(reason);
    expect(abort.signal.aborted).toBe(true);
    expect(abort.signal.reason).toBe(reason);
  });

  it("aborts a signal read before the abort, and calls the listener once with the first reason", () => {
    const abort = new RunAbort();
    const signal = abort.signal;
    const heard: unknown[] = [];
    abort.onAbort((r) => heard.push(r));
    abort.abort("first");
    abort.abort("second");
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe("first");
    expect(abort.reason).toBe("first");
    expect(heard).toEqual(["first"]);
  });

  it("does not call a listener that was cleared", () => {
    const abort = new RunAbort();
    const heard: unknown[] = [];
    abort.onAbort((r) => heard.push(r));
    abort.onAbort(undefined);
    abort.abort("x");
    expect(heard).toEqual([]);
    expect(abort.aborted).toBe(true);
  });
});
