/** Regression tests for pure logic found by review: token subjects, coerceError, encodeCache limits. */
import { describe, expect, it } from "vitest";
import { encodeCache } from "../../src/codec.js";
import { coerceError, InvalidCacheError } from "../../src/errors.js";
import { parseTokenSubject } from "../../src/nats/subjects.js";

class C { id = "c"; payload: unknown = null; identity() { return this.id; } async materialize() {} }

describe("robustness", () => {
  it("parseTokenSubject returns null for a subject whose identity dmm would refuse (NUL, over 512 bytes)", () => {
    expect(parseTokenSubject("ns", `dmm.ns.k.${Buffer.from("a\u0000b").toString("base64url")}`)).toBeNull();
    expect(parseTokenSubject("ns", `dmm.ns.k.${Buffer.from("x".repeat(513)).toString("base64url")}`)).toBeNull();
  });
  it("coerceError never throws, even for a Proxy whose traps throw", () => {
    const hostile = new Proxy({}, { getPrototypeOf() { throw new Error("trap"); }, get() { throw new Error("trap"); } });
    expect(() => coerceError(hostile)).not.toThrow();
  });
  it("encodeCache refuses a cache nested too deeply with InvalidCacheError, not a RangeError", () => {
    let v: unknown = 1;
    for (let i = 0; i < 10_000; i++) v = [v];
    expect(() => encodeCache("k", "c", Object.assign(new C(), { payload: v }), 1 << 24)).toThrow(InvalidCacheError);
  });
  it("encodeCache refuses a hole in an array as it refuses undefined in one", () => {
    // eslint-disable-next-line no-sparse-arrays
    expect(() => encodeCache("k", "c", Object.assign(new C(), { payload: [1, , 3] }), 1 << 24)).toThrow(InvalidCacheError);
  });
  it("encodeCache refuses a top-level field named __proto__ (restoring it would replace the instance's prototype)", () => {
    const instance = new C();
    Object.defineProperty(instance, "__proto__", { value: { polluted: true }, enumerable: true, writable: true, configurable: true });
    expect(() => encodeCache("k", "c", instance, 1 << 24)).toThrow(InvalidCacheError);
  });
});
