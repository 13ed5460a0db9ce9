/**
 * Property-based tests of what dmm accepts from users before anything is written: names,
 * identities, caches and token subjects. Each generated input is either accepted unchanged (and
 * comes back as the same value) or refused with the typed error; nothing else may happen.
 * Pure functions, no I/O: thousands of cases run in well under a second.
 */
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { checkIdentity, checkName, encodeCache, MAX_IDENTITY_BYTES } from "../../src/codec.js";
import { CacheTooLargeError, coerceError, InvalidCacheError, InvalidIdentityError, InvalidNameError } from "../../src/errors.js";
import { parseTokenSubject, tokenSubject } from "../../src/nats/subjects.js";

const RUNS = { numRuns: 2_000 };

/** SQL, shell, subject and JSON syntax that must never be interpreted anywhere. */
const INJECTIONS = [
  "'; drop table dmm.dmm_matter; --",
  "x' or '1'='1",
  '"; drop schema dmm cascade; --',
  "$1",
  "$$; select pg_sleep(10); $$",
  "')); delete from dmm.dmm_outbox; --",
  "\\'; truncate dmm.dmm_matter; --",
  "dmm.ns.kind.>",
  "a.*.b",
  "> ",
  "${process.exit(1)}",
  '{"__proto__":{"polluted":true}}',
  "/* */ select 1",
  "\u0000",
  "\ud800",
  "\r\n",
];

/** One character (or lone surrogate) from every class that matters to UTF-8, Postgres text, subjects and SQL. */
const unit = fc.oneof(
  fc.constantFrom(".", "*", ">", " ", "\t", "\n", "'", '"', "\\", "$", ";", "-", "%", "_", "\u0000", "\u007f", "\u2028"),
  fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCodePoint(c)),
  fc.integer({ min: 0x00, max: 0x1f }).map((c) => String.fromCodePoint(c)),
  fc.integer({ min: 0x80, max: 0x7ff }).map((c) => String.fromCodePoint(c)),
  fc.integer({ min: 0x800, max: 0xffff }).map((c) => String.fromCharCode(c)), // includes lone surrogates
  fc.integer({ min: 0x10000, max: 0x10ffff }).map((c) => String.fromCodePoint(c)),
);

/** Strings of any of the above, short. */
const anyString = fc.oneof(fc.array(unit, { maxLength: 40 }).map((a) => a.join("")), fc.string({ unit: "binary" }), fc.constantFrom(...INJECTIONS));

/** Well-formed strings without NUL, of exactly 510 to 514 UTF-8 bytes: the identity limit and its neighbours. */
const boundaryString = fc
  .tuple(
    fc.array(fc.oneof(unit.filter((u) => u.isWellFormed() && u !== "\u0000")), { minLength: 0, maxLength: 200 }),
    fc.integer({ min: MAX_IDENTITY_BYTES - 2, max: MAX_IDENTITY_BYTES + 2 }),
  )
  .map(([parts, target]) => {
    let s = "";
    for (const p of parts) {
      if (Buffer.byteLength(s + p, "utf8") > target) break;
      s += p;
    }
    return s + "x".repeat(target - Buffer.byteLength(s, "utf8"));
  });

/** The identity rule, as the README states it. */
function identityIsValid(s: string): boolean {
  return s.length > 0 && s.isWellFormed() && !s.includes("\u0000") && Buffer.byteLength(s, "utf8") <= MAX_IDENTITY_BYTES;
}

const validName = fc.stringMatching(/^[a-z0-9_-]{1,64}$/);

describe("names", () => {
  it("accepts exactly the strings of 1 to 64 characters from [a-z0-9_-] and refuses all else with InvalidNameError", () => {
    fc.assert(
      fc.property(fc.oneof(validName, anyString, fc.anything()), fc.constantFrom("namespace", "kind") as fc.Arbitrary<"namespace" | "kind">, (value, what) => {
        const valid = typeof value === "string" && /^[a-z0-9_-]{1,64}$/.test(value);
        if (valid) {
          expect(checkName(what, value)).toBe(value);
        } else {
          expect(() => checkName(what, value)).toThrow(InvalidNameError);
        }
      }),
      RUNS,
    );
  });
});

describe("identities", () => {
  it("accepts every non-empty well-formed string of at most 512 UTF-8 bytes without NUL, unchanged, and refuses every other value with InvalidIdentityError", () => {
    fc.assert(
      fc.property(fc.oneof(anyString, boundaryString, fc.anything()), (value) => {
        if (typeof value === "string" && identityIsValid(value)) {
          expect(checkIdentity("k", value)).toBe(value);
        } else {
          expect(() => checkIdentity("k", value)).toThrow(InvalidIdentityError);
        }
      }),
      RUNS,
    );
  });

  it("accepts an identity of exactly 512 UTF-8 bytes and refuses one byte more", () => {
    fc.assert(
      fc.property(boundaryString, (s) => {
        const bytes = Buffer.byteLength(s, "utf8");
        if (bytes <= MAX_IDENTITY_BYTES) expect(checkIdentity("k", s)).toBe(s);
        else expect(() => checkIdentity("k", s)).toThrow(/limit is 512 bytes/);
      }),
      RUNS,
    );
  });
});

describe("token subjects", () => {
  it("map every valid identity to four subject-safe tokens and back to the same kind and identity", () => {
    fc.assert(
      fc.property(validName, validName, fc.oneof(anyString, boundaryString).filter(identityIsValid), (ns, kind, identity) => {
        const subject = tokenSubject(ns, kind, identity);
        const tokens = subject.split(".");
        expect(tokens).toHaveLength(4);
        for (const t of tokens) expect(t).toMatch(/^[A-Za-z0-9_-]+$/);
        expect(parseTokenSubject(ns, subject)).toEqual({ kind, identity });
      }),
      RUNS,
    );
  });

  it("parse any string either as nothing or as the one subject dmm would have written for it", () => {
    const b64 = fc.string({ unit: fc.constantFrom(..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.*>"), maxLength: 24 });
    fc.assert(
      fc.property(validName, validName, fc.oneof(anyString, b64), fc.constantFrom("", "x."), (ns, kind, tail, junk) => {
        for (const subject of [tail, `dmm.${ns}.${tail}`, `dmm.${ns}.${kind}.${tail}`, `dmm.${ns}.${junk}${kind}.${tail}`]) {
          const parsed = parseTokenSubject(ns, subject);
          if (parsed !== null) expect(tokenSubject(ns, parsed.kind, parsed.identity)).toBe(subject);
        }
      }),
      RUNS,
    );
  });
});

/** Marks a value that encodeCache must refuse. */
const INVALID = Symbol("invalid");

/**
 * What a value must come back as after a JSON round trip through dmm, or INVALID when dmm must
 * refuse it. `undefined` object fields are omitted (as JSON does); `-0` comes back as `0`.
 */
function expected(value: unknown, inArray = false): unknown {
  switch (typeof value) {
    case "string":
      return value.isWellFormed() && !value.includes("\u0000") ? value : INVALID;
    case "number":
      if (!Number.isFinite(value)) return INVALID;
      return Object.is(value, -0) ? 0 : value;
    case "boolean":
      return value;
    case "undefined":
      return inArray ? INVALID : undefined;
    case "bigint":
    case "function":
    case "symbol":
      return INVALID;
  }
  if (value === null) return null;
  if (Array.isArray(value)) {
    if (Object.getPrototypeOf(value) !== Array.prototype) return INVALID;
    const out: unknown[] = [];
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) return INVALID; // a hole (not generated here: see the sparse-array finding)
      const e = expected(value[i], true);
      if (e === INVALID) return INVALID;
      out.push(e);
    }
    return out;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return INVALID;
  const entries: [string, unknown][] = [];
  for (const key of Object.keys(value as object)) {
    if (!key.isWellFormed() || key.includes("\u0000")) return INVALID;
    const e = expected((value as Record<string, unknown>)[key]);
    if (e === INVALID) return INVALID;
    if (e !== undefined) entries.push([key, e]);
  }
  return Object.fromEntries(entries);
}

class Cache {
  id = "c";
  payload: unknown = null;
  identity() {
    return this.id;
  }
  async materialize() {}
}

/** Everything JavaScript can hold, including what JSON cannot (sparse arrays aside: see the report). */
const anyValue = fc.anything({
  maxDepth: 3,
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withObjectString: true,
  withTypedArray: true,
  withUnicodeString: true,
  withSparseArray: false,
});

const hostileLeaf = fc.constantFrom<unknown>(
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  -0,
  10n,
  () => 1,
  Symbol("s"),
  new Date(0),
  new Map([[1, 2]]),
  new Uint8Array(2),
  new (class Point {
    x = 1;
  })(),
  Object.create(null),
  undefined,
  "nul\u0000",
  "lone\udc00",
  ...INJECTIONS,
);

const payload = fc.oneof(
  anyValue,
  hostileLeaf,
  fc.jsonValue(),
  fc.array(fc.oneof(hostileLeaf, fc.jsonValue()), { maxLength: 5 }),
  fc.dictionary(fc.oneof(fc.string(), fc.constantFrom(...INJECTIONS)), fc.oneof(hostileLeaf, fc.jsonValue()), { maxKeys: 5 }),
);

describe("caches", () => {
  it("stores any value faithfully as JSON or refuses it with InvalidCacheError, never anything else", () => {
    fc.assert(
      fc.property(payload, (value) => {
        const instance = Object.assign(new Cache(), { payload: value });
        const want = expected(value);
        let text: string;
        try {
          text = encodeCache("k", "c", instance, 1 << 24);
        } catch (err) {
          expect(err, `refused ${String(want === INVALID ? "an invalid value" : "a valid value")}`).toBeInstanceOf(InvalidCacheError);
          expect(want).toBe(INVALID);
          expect((err as Error).message).toMatch(/field "payload/);
          return;
        }
        expect(want).not.toBe(INVALID);
        const back = JSON.parse(text) as Record<string, unknown>;
        expect(back).toStrictEqual(want === undefined ? { id: "c" } : { id: "c", payload: want });
      }),
      RUNS,
    );
  });

  it("refuses a reference cycle at any depth with InvalidCacheError, and stores shared non-cyclic references as copies", () => {
    const tree = fc.letrec<{ node: unknown }>((tie) => ({
      node: fc.oneof(
        { depthSize: "small", withCrossShrink: true },
        fc.jsonValue({ maxDepth: 1 }),
        fc.array(tie("node"), { maxLength: 3 }),
        fc.dictionary(fc.string({ maxLength: 3 }), tie("node"), { maxKeys: 3 }),
      ),
    })).node;
    fc.assert(
      fc.property(tree, fc.nat(), fc.nat(), (root, at, back) => {
        const containers: object[] = [];
        const walk = (v: unknown) => {
          if (v === null || typeof v !== "object") return;
          containers.push(v);
          for (const c of Object.values(v)) walk(c);
        };
        const top = { root };
        walk(top);
        // A shared reference is no cycle: the same object twice in one cache is two copies in JSON.
        const shared = containers[at % containers.length]!;
        const dag = Object.assign(new Cache(), { payload: top, again: shared });
        expect(JSON.parse(encodeCache("k", "c", dag, 1 << 24))).toEqual(JSON.parse(JSON.stringify({ ...dag })));
        // A back-reference from a container to itself or any ancestor is a cycle.
        const path: object[] = [];
        const findPath = (v: unknown, target: object): boolean => {
          if (v === null || typeof v !== "object") return false;
          path.push(v);
          if (v === target) return true;
          for (const c of Object.values(v)) if (findPath(c, target)) return true;
          path.pop();
          return false;
        };
        findPath(top, shared);
        const ancestor = path[back % path.length]!;
        if (Array.isArray(shared)) shared.push(ancestor);
        else (shared as Record<string, unknown>)["\u0001cycle"] = ancestor;
        expect(() => encodeCache("k", "c", Object.assign(new Cache(), { payload: top }), 1 << 24)).toThrow(/reference cycle/);
      }),
      { numRuns: 500 },
    );
  });

  it("stores a cache of exactly maxCacheBytes bytes of JSON and refuses one byte more with CacheTooLargeError", () => {
    fc.assert(
      fc.property(fc.array(unit.filter((u) => u.isWellFormed() && u !== "\u0000"), { maxLength: 300 }), (parts) => {
        const instance = Object.assign(new Cache(), { payload: parts.join("") });
        const bytes = Buffer.byteLength(JSON.stringify({ ...instance }), "utf8");
        expect(JSON.parse(encodeCache("k", "c", instance, bytes))).toEqual({ ...instance });
        expect(() => encodeCache("k", "c", instance, bytes - 1)).toThrow(CacheTooLargeError);
      }),
      RUNS,
    );
  });
});

describe("coerceError", () => {
  it("turns any thrown value into an Error with a string message, without throwing", () => {
    fc.assert(
      fc.property(fc.oneof(anyValue, hostileLeaf), (thrown) => {
        const err = coerceError(thrown);
        expect(err).toBeInstanceOf(Error);
        expect(typeof err.message).toBe("string");
        if (!(thrown instanceof Error)) expect(err.message).toMatch(/^Non-Error thrown: /);
      }),
      RUNS,
    );
  });
});
