import { describe, expect, it } from "vitest";
import { checkIdentity, checkName, encodeCache } from "../../src/codec.js";
import { CacheTooLargeError, InvalidCacheError, InvalidIdentityError, InvalidNameError } from "../../src/errors.js";

describe("checkName", () => {
  it("accepts 1 to 64 characters of a-z, 0-9, _ and -", () => {
    for (const ok of ["a", "music", "a_b-c9", "x".repeat(64)]) expect(checkName("kind", ok)).toBe(ok);
  });

  it("refuses anything else with a typed error naming the value", () => {
    for (const bad of ["", "A", "a.b", "a b", "é", "x".repeat(65), 5, null]) {
      expect(() => checkName("namespace", bad)).toThrow(InvalidNameError);
    }
    expect(() => checkName("kind", "Bad")).toThrow(/The kind "Bad" is not valid/);
  });
});

describe("checkIdentity", () => {
  it("counts the limit in UTF-8 bytes", () => {
    expect(checkIdentity("k", "é".repeat(256))).toHaveLength(256);
    expect(() => checkIdentity("k", "é".repeat(257))).toThrow(InvalidIdentityError);
  });
});

describe("encodeCache", () => {
  class M {
    id = "a";
    n = 1;
    s = "x";
    list = [1, "two", null, { deep: true }];
    skipped = undefined;
    identity() {
      return this.id;
    }
  }

  it("serializes own fields and drops undefined ones, like JSON", () => {
    expect(JSON.parse(encodeCache("k", "a", new M(), 10_000))).toEqual({ id: "a", n: 1, s: "x", list: [1, "two", null, { deep: true }] });
  });

  it("names the offending nested field", () => {
    const m = Object.assign(new M(), { list: [{ at: new Date() }] });
    expect(() => encodeCache("k", "a", m, 10_000)).toThrow(/field "list\[0\]\.at" holds a Date instance/);
  });

  it("accepts shared references that are not cycles", () => {
    const shared = { v: 1 };
    expect(() => encodeCache("k", "a", Object.assign(new M(), { a: shared, b: shared }), 10_000)).not.toThrow();
  });

  it("refuses NUL characters in strings and keys", () => {
    expect(() => encodeCache("k", "a", Object.assign(new M(), { s: "a\u0000" }), 10_000)).toThrow(InvalidCacheError);
    expect(() => encodeCache("k", "a", Object.assign(new M(), { ["k\u0000"]: 1 }), 10_000)).toThrow(InvalidCacheError);
  });

  it("measures the size limit in bytes of JSON", () => {
    expect(() => encodeCache("k", "a", Object.assign(new M(), { s: "é".repeat(50) }), 100)).toThrow(CacheTooLargeError);
  });

  describe("on a cache of plain fields only (strings, numbers, booleans, null)", () => {
    class Flat {
      id = "a";
      n = 1.5;
      ok = true;
      none = null;
      gone = undefined;
      identity() {
        return this.id;
      }
    }

    it("stores the same JSON as the full check would", () => {
      expect(encodeCache("k", "a", new Flat(), 10_000)).toBe('{"id":"a","n":1.5,"ok":true,"none":null}');
    });

    it("still refuses what jsonb or JSON would not give back", () => {
      for (const bad of [{ s: "a\u0000" }, { s: "\ud800" }, { n: NaN }, { n: Infinity }, { ["k\u0000"]: 1 }, { b: 1n }, { f: () => 1 }, { d: new Date(0) }]) {
        expect(() => encodeCache("k", "a", Object.assign(new Flat(), bad), 10_000)).toThrow(InvalidCacheError);
      }
    });

    it("still applies the byte limit, counted in UTF-8", () => {
      expect(encodeCache("k", "a", Object.assign(new Flat(), { s: "é".repeat(10) }), 80)).toContain("é");
      expect(() => encodeCache("k", "a", Object.assign(new Flat(), { s: "é".repeat(30) }), 80)).toThrow(CacheTooLargeError);
    });
  });
});
