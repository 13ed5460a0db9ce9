/**
 * Hostile and bad input on the real Postgres and NATS: generated identities, caches and names
 * (each stored and materialized faithfully, or refused with its typed error and nothing
 * written), garbage that someone else publishes on dmm's channels, and materializers that throw
 * odd things or blow up their caches. engine.test.ts already covers a run that never settles,
 * string and object throws, and the timeout; this file adds what it does not.
 */
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { open, type BucketInternals } from "../../src/bucket.js";
import { MAX_IDENTITY_BYTES } from "../../src/codec.js";
import { CacheTooLargeError, InvalidCacheError, InvalidIdentityError, InvalidNameError } from "../../src/errors.js";
import type { Context, Logger } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { NATS_URL } from "../harness/env.js";
import { quiesce } from "../harness/quiesce.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();

/**
 * Heartbeats are not under test here: a long lease keeps runs of a slow CI machine from meeting
 * one, so that every failure below is about the input.
 */
const QUIET = { leaseMs: 120_000, heartbeatMs: 60_000 };

interface Line {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

/** A logger that keeps every line with its fields (child fields included). */
function recordingLogger(lines: Line[], base: Record<string, unknown> = {}): Logger {
  const emit = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, msg, fields: { ...base, ...fields } });
  return { debug: emit("debug"), info: emit("info"), warn: emit("warn"), error: emit("error"), child: (f) => recordingLogger(lines, { ...base, ...f }) };
}

/** Lines that mean a statement or the dispatch broke, which no input may cause. */
function breakage(lines: Line[]): Line[] {
  return lines.filter((l) => /^(claim:error|finish:error|tokens:fetch:error|relay:publish:error|sweep:error|schedule:error|listener:error)$/.test(l.msg));
}

/** Keeps the expected failure lines of hostile materializers out of the test output. */
function quietLogger(): Logger {
  return recordingLogger([]);
}

function recordRuns(bucket: unknown): RunEndEvent[] {
  const events: RunEndEvent[] = [];
  (bucket as BucketInternals).onRunEnd = (e) => events.push(e);
  return events;
}

const INJECTIONS = [
  "'; drop table dmm.dmm_matter; --",
  "x' or '1'='1",
  '"; drop schema dmm cascade; --',
  "$1",
  "$$; select pg_sleep(10); $$",
  "')); delete from dmm.dmm_outbox; --",
  "dmm.ns.kind.>",
  "a.*.b",
  "> ",
  '{"__proto__":{"polluted":true}}',
];

/** One character from each class that matters to UTF-8, Postgres text, subjects and SQL (lone surrogates and NUL included). */
const unit = fc.oneof(
  fc.constantFrom(".", "*", ">", " ", "\t", "\n", "'", '"', "\\", "$", ";", "\u0000", "\u007f", "\u2028", "\u0001"),
  fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCodePoint(c)),
  fc.integer({ min: 0x80, max: 0x7ff }).map((c) => String.fromCodePoint(c)),
  fc.integer({ min: 0x800, max: 0xffff }).map((c) => String.fromCharCode(c)),
  fc.integer({ min: 0x10000, max: 0x10ffff }).map((c) => String.fromCodePoint(c)),
);

/** Well-formed, NUL-free text of exactly 511 to 513 UTF-8 bytes: the identity limit and both neighbours. */
const boundaryIdentity = fc
  .tuple(fc.array(unit.filter((u) => u.isWellFormed() && u !== "\u0000"), { maxLength: 150 }), fc.integer({ min: MAX_IDENTITY_BYTES - 1, max: MAX_IDENTITY_BYTES + 1 }))
  .map(([parts, target]) => {
    let s = "";
    for (const p of parts) {
      if (Buffer.byteLength(s + p, "utf8") > target) break;
      s += p;
    }
    return s + "y".repeat(target - Buffer.byteLength(s, "utf8"));
  });

const identityArb = fc.oneof(
  { arbitrary: fc.array(unit, { minLength: 0, maxLength: 24 }).map((a) => a.join("")), weight: 6 },
  { arbitrary: fc.string({ unit: "grapheme" }), weight: 2 },
  { arbitrary: boundaryIdentity, weight: 2 },
  { arbitrary: fc.constantFrom(...INJECTIONS), weight: 2 },
);

function identityIsValid(s: string): boolean {
  return s.length > 0 && s.isWellFormed() && !s.includes("\u0000") && Buffer.byteLength(s, "utf8") <= MAX_IDENTITY_BYTES;
}

/** Marks a value dmm must refuse. */
const INVALID = Symbol("invalid");

/** What a cache value comes back as after dmm's JSON round trip, or INVALID (see property-codec.test.ts). */
function expected(value: unknown, inArray = false): unknown {
  switch (typeof value) {
    case "string":
      return value.isWellFormed() && !value.includes("\u0000") ? value : INVALID;
    case "number":
      return Number.isFinite(value) ? (Object.is(value, -0) ? 0 : value) : INVALID;
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
    const out: unknown[] = [];
    for (let i = 0; i < value.length; i++) {
      const e = expected(value[i], true);
      if (e === INVALID || !(i in value)) return INVALID;
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

const hostileLeaf = fc.constantFrom<unknown>(
  Number.NaN,
  Number.POSITIVE_INFINITY,
  -0,
  10n,
  () => 1,
  Symbol("s"),
  new Date(0),
  new Map([[1, 2]]),
  new Set([1]),
  new Uint8Array(2),
  undefined,
  "nul\u0000",
  "lone\ud800",
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  Number.MAX_SAFE_INTEGER + 2,
  "\u2028\u2029\u0001\u007f",
  ...INJECTIONS,
);

const cacheArb = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  hostileLeaf,
  fc.array(fc.oneof(hostileLeaf, fc.jsonValue({ maxDepth: 2 })), { maxLength: 4 }),
  fc.dictionary(fc.oneof(fc.string({ unit: "binary", maxLength: 6 }), fc.constantFrom(...INJECTIONS)), fc.oneof(hostileLeaf, fc.jsonValue({ maxDepth: 2 })), {
    maxKeys: 4,
  }),
  fc.string({ unit: "grapheme", minLength: 100, maxLength: 1_500 }),
);

describe.each(MODES)("generated input with %s dispatch", (mode) => {
  it("materializes every valid identity under exactly its own name and refuses every invalid one with InvalidIdentityError, writing nothing", async () => {
    const lines: Line[] = [];
    const bucket = await env.open(mode, { ...QUIET, logger: recordingLogger(lines) });
    const sql = env.sql();
    const seen = new Map<string, number>();
    const saved = new Map<string, number>();
    class Key {
      id = "";
      nonce = 0;
      seenAs = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        this.seenAs = ctx.identity;
        seen.set(ctx.identity, this.nonce);
      }
    }
    const stream = bucket.register("key", Key);
    (bucket as unknown as BucketInternals).onRunEnd = (e) => {
      if (e.outcome === "ok") saved.set(e.identity, seen.get(e.identity)!);
    };
    const work = stream.work({ concurrency: 16 });
    const accepted = new Set<string>();
    let nonce = 0;
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(identityArb, { maxLength: 8 }), async (ids) => {
        nonce++;
        const valid = ids.filter(identityIsValid);
        for (const id of ids.filter((i) => !identityIsValid(i))) {
          await expect(bucket.notify(Object.assign(new Key(), { id, nonce }))).rejects.toBeInstanceOf(InvalidIdentityError);
          await expect(bucket.touch(Key, id)).rejects.toBeInstanceOf(InvalidIdentityError);
          await expect(bucket.matter(Key, id)).rejects.toBeInstanceOf(InvalidIdentityError);
        }
        if (valid.length === 0) return;
        await bucket.notify(valid.map((id) => Object.assign(new Key(), { id, nonce })));
        for (const id of valid) accepted.add(id);
        await waitFor(`runs of ${valid.length} identities`, () => valid.every((id) => saved.get(id) === nonce));
        for (const id of valid) {
          expect((await bucket.matter(Key, id))?.cache).toEqual({ id, nonce, seenAs: id });
        }
      }),
      { numRuns: 30 },
    );
    await quiesce(bucket, sql);
    const rows = await sql<{ identity: string; cached: string }[]>`
      select identity, cache->>'id' as cached from dmm.dmm_matter where namespace = ${bucket.namespace}`;
    expect(rows.map((r) => r.identity).sort()).toEqual([...accepted].sort());
    for (const r of rows) expect(r.cached).toBe(r.identity);
    expect([...seen.keys()].every((id) => accepted.has(id)), "no run for an identity that was never notified").toBe(true);
    expect(breakage(lines)).toEqual([]);
    expect(lines.filter((l) => l.msg === "tokens:garbage")).toEqual([]);
    await bucket.close();
    await work;
    await sql.close();
  });

  it("materializes every cache that is plain JSON as the same value and refuses every other with InvalidCacheError or CacheTooLargeError, writing nothing", async () => {
    const lines: Line[] = [];
    const bucket = await env.open(mode, { ...QUIET, maxCacheBytes: 2_048, logger: recordingLogger(lines) });
    const sql = env.sql();
    const seen = new Map<string, unknown>();
    const done = new Set<string>();
    class Blob {
      id = "";
      payload: unknown = null;
      runs = 0;
      identity() {
        return this.id;
      }
      async materialize() {
        seen.set(this.id, this.payload);
        this.runs++;
      }
    }
    const stream = bucket.register("blob", Blob);
    (bucket as unknown as BucketInternals).onRunEnd = (e) => {
      if (e.outcome === "ok") done.add(e.identity);
    };
    const work = stream.work({ concurrency: 16 });
    let n = 0;
    let stored = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(cacheArb, { minLength: 1, maxLength: 4 }), async (payloads) => {
        const items = payloads.map((payload) => ({ id: `c${n++}`, payload, want: expected(payload) }));
        const good = items.filter((i) => i.want !== INVALID && Buffer.byteLength(JSON.stringify({ ...new Blob(), id: i.id, payload: i.payload }), "utf8") <= 2_048);
        for (const item of items.filter((i) => !good.includes(i))) {
          const err = await bucket.notify(Object.assign(new Blob(), { id: item.id, payload: item.payload })).catch((e: unknown) => e);
          expect(err).toBeInstanceOf(item.want === INVALID ? InvalidCacheError : CacheTooLargeError);
          expect(await bucket.matter(Blob, item.id)).toBeUndefined();
        }
        if (good.length === 0) return;
        await bucket.notify(good.map((i) => Object.assign(new Blob(), { id: i.id, payload: i.payload })));
        stored += good.length;
        await waitFor(`runs of ${good.length} caches`, () => good.every((i) => done.has(i.id)));
        for (const item of good) {
          // A field left undefined is omitted, so the run sees the class default (null).
          const want = item.want === undefined ? null : item.want;
          expect(seen.get(item.id)).toStrictEqual(want);
          expect((await bucket.matter(Blob, item.id))?.cache).toStrictEqual({ id: item.id, payload: want, runs: 1 });
        }
      }),
      { numRuns: 30 },
    );
    await quiesce(bucket, sql);
    const [row] = await sql<{ n: number }[]>`select count(*)::int as n from dmm.dmm_matter where namespace = ${bucket.namespace}`;
    expect(row!.n).toBe(stored);
    expect(breakage(lines)).toEqual([]);
    await bucket.close();
    await work;
    await sql.close();
  });

  it("works any kind and namespace of 1 to 64 characters from [a-z0-9_-] and refuses every other name with InvalidNameError, writing nothing", async () => {
    const sql = env.sql();
    const nameArb = fc.oneof(fc.stringMatching(/^[a-z0-9_-]{1,64}$/), fc.array(unit, { maxLength: 70 }).map((a) => a.join("")), fc.constantFrom(...INJECTIONS, "", "A", "x".repeat(65)));
    const nameIsValid = (s: string) => /^[a-z0-9_-]{1,64}$/.test(s);
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(nameArb, { minLength: 1, maxLength: 3 }), fc.stringMatching(/^[a-z0-9_-]{1,55}$/), async (kinds, nsStem) => {
        // A generated stem, made unique: the NATS stream dmm_<namespace> is shared by the whole machine.
        const namespace = `${nsStem}-${Math.random().toString(16).slice(2, 10)}`;
        for (const bad of kinds.filter((k) => !nameIsValid(k))) {
          await expect(open(bad, { database: env.url })).rejects.toBeInstanceOf(InvalidNameError);
        }
        const bucket = await env.open(mode, QUIET, namespace);
        const runs = recordRuns(bucket);
        const works: Promise<void>[] = [];
        const good = kinds.filter(nameIsValid);
        for (const kind of kinds) {
          const cls = class {
            id = "";
            identity() {
              return this.id;
            }
            async materialize() {}
          };
          if (!nameIsValid(kind)) {
            expect(() => bucket.register(kind, cls)).toThrow(InvalidNameError);
            await expect(bucket.touch(kind, "x")).rejects.toThrow(/not registered/);
            continue;
          }
          const stream = bucket.register(kind, cls);
          works.push(stream.work());
          await bucket.notify(Object.assign(new cls(), { id: `${kind}!` }));
        }
        await waitFor(`runs of ${good.length} kinds`, () => runs.length >= good.length);
        expect(runs.map((r) => [r.kind, r.identity, r.outcome]).sort()).toEqual(good.map((k) => [k, `${k}!`, "ok"]).sort());
        const rows = await sql<{ namespace: string; kind: string }[]>`select namespace, kind from dmm.dmm_matter where namespace = ${namespace}`;
        expect(rows.map((r) => r.kind).sort()).toEqual([...good].sort());
        await bucket.close();
        await Promise.all(works);
      }),
      { numRuns: mode === "nats" ? 6 : 10 },
    );
    // Only names that passed the rule ever reached a row.
    const names = await sql<{ name: string }[]>`select distinct namespace as name from dmm.dmm_matter union select distinct kind from dmm.dmm_matter`;
    for (const { name } of names) expect(name).toMatch(/^[a-z0-9_-]{1,64}$/);
    await sql.close();
  });
});

describe("garbage on dmm's channels", () => {
  it("logs and discards garbage published on a kind's NATS subjects, ignores forged tokens and keeps materializing", async () => {
    const lines: Line[] = [];
    const bucket = await env.open("nats", { ...QUIET, logger: recordingLogger(lines) });
    const sql = env.sql();
    const ns = bucket.namespace;
    class Thing {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("thing", Thing);
    const runs = recordRuns(bucket);
    const nc = await connect({ servers: NATS_URL });
    const js = jetstream(nc);
    const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64url");
    const garbage = [
      `dmm.${ns}.thing.not!base64url`,
      `dmm.${ns}.thing.a.b.c`,
      `dmm.${ns}.thing.YWJjZB`, // "abcd" with stray bits: not what dmm would write
      `dmm.${ns}.thing.${b64(Buffer.from([0xff, 0xfe, 0xc3]))}`, // not UTF-8
      `dmm.${ns}.thing.${b64(Buffer.from([0xed, 0xa0, 0x80]))}`, // an encoded lone surrogate
      `dmm.${ns}.thing.${b64("ok")}=`,
      `dmm.${ns}.thing.batch.x`, // a batch token's subject whose body is not a list of identities
    ];
    const harmless = [
      `dmm.${ns}.thing.${b64("never notified")}`,
      `dmm.${ns}.thing.${b64("x".repeat(MAX_IDENTITY_BYTES + 100))}`, // longer than any identity: no such matter
      `dmm.${ns}.other.${b64("a kind nobody works")}`,
    ];
    const junk = (i: number) => Buffer.from(Array.from({ length: 64 + i * 512 }, (_, j) => (j * 7 + i) % 256));
    // A subject holds one message at a time: until the worker's ack of the last one reaches the
    // server, JetStream refuses the next (10077), as it refuses dmm's own relay; retry then.
    const publishAll = async (subjects: string[]) => {
      for (const [i, subject] of subjects.entries()) {
        await waitFor(`a free subject ${subject}`, () =>
          js.publish(subject, junk(i), { msgID: `junk-${i}-${Math.random()}` }).then(
            () => true,
            (err: unknown) => {
              if ((err as { code?: number }).code === 10077) return false;
              throw err;
            },
          ),
        );
      }
    };
    const loggedTimes = (n: number) => () =>
      garbage.every((subject) => lines.filter((l) => l.msg === "tokens:garbage" && l.fields.subject === subject).length === n);
    // Before any worker exists, and again while one works.
    await publishAll([...garbage, ...harmless]);
    const work = stream.work();
    const ids = Array.from({ length: 20 }, (_, i) => `t${i}`);
    await bucket.notify(ids.map((id) => Object.assign(new Thing(), { id })));
    await waitFor("every garbage subject to be logged", loggedTimes(1));
    await publishAll(garbage);
    await waitFor("20 runs", () => runs.length >= 20);
    // Forged tokens for identities that are up to date cause no run: a token is only a nudge.
    await publishAll(ids.map((id) => `dmm.${ns}.thing.${b64(id)}`));
    await bucket.notify(Object.assign(new Thing(), { id: "after" }));
    await waitFor("the run after the garbage", () => runs.some((r) => r.identity === "after"));
    await waitFor("every garbage subject to be logged again", loggedTimes(2));
    // The kind's subjects drain; only the token of the kind nobody works is left in the stream.
    await waitFor("the kind's subjects to drain", async () => (await jetstreamMessages(nc, ns)) === 1);
    expect(runs.map((r) => r.outcome).every((o) => o === "ok")).toBe(true);
    expect(runs.map((r) => r.identity).sort()).toEqual([...ids, "after"].sort());
    expect(breakage(lines)).toEqual([]);
    await nc.close();
    await bucket.close();
    await work;
    await sql.close();
  });

  it.each(MODES)("ignores garbage notifications on the dmm_outbox channel and keeps materializing (%s dispatch)", async (mode) => {
    const lines: Line[] = [];
    const bucket = await env.open(mode, { ...QUIET, logger: recordingLogger(lines) });
    const sql = env.sql();
    const ns = bucket.namespace;
    class Thing {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("thing", Thing);
    const runs = recordRuns(bucket);
    const work = stream.work();
    const payloads = ["", ":", "garbage", ns, `${ns}:`, `${ns}:nokind`, `${ns}:thing:extra`, `:${ns}`, `${ns}:${"x".repeat(7_000)}`, "é:🎵", "\n", ...INJECTIONS];
    const noise = async () => {
      for (const p of payloads) await sql`select pg_notify('dmm_outbox', ${p})`;
    };
    await noise();
    await bucket.notify(Array.from({ length: 10 }, (_, i) => Object.assign(new Thing(), { id: `t${i}` })));
    await Promise.all([noise(), noise(), noise()]);
    await waitFor("10 runs", () => runs.length >= 10);
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.outcome)).toEqual(Array(10).fill("ok"));
    expect(breakage(lines)).toEqual([]);
    await bucket.close();
    await work;
    await sql.close();
  });
});

/** Messages left in a bucket's stream. */
async function jetstreamMessages(nc: Awaited<ReturnType<typeof connect>>, namespace: string): Promise<number> {
  const { jetstreamManager } = await import("@nats-io/jetstream");
  const jsm = await jetstreamManager(nc);
  return (await jsm.streams.info(`dmm_${namespace}`)).state.messages;
}

describe.each(MODES)("a hostile materializer with %s dispatch", (mode) => {
  it("records CacheTooLargeError and keeps the stored cache when a run grows its cache past maxCacheBytes", async () => {
    const bucket = await env.open(mode, { ...QUIET, maxCacheBytes: 1_000, logger: quietLogger() });
    const sql = env.sql();
    class Hoarder {
      id = "";
      grow = true;
      blob = "small";
      identity() {
        return this.id;
      }
      async materialize() {
        this.blob = this.grow ? "x".repeat(5_000) : "tidy";
      }
    }
    const stream = bucket.register("hoarder", Hoarder, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Hoarder(), { id: "h" }));
    await waitFor("the failed run", () => runs.length >= 1);
    const view = await waitFor("the failure to be recorded", async () => {
      const v = await bucket.matter(Hoarder, "h");
      return v?.attempts === 1 ? v : undefined;
    });
    expect(runs[0]!.outcome).toBe("fail");
    expect(runs[0]!.error).toBeInstanceOf(CacheTooLargeError);
    expect(view).toMatchObject({ state: "failing", attempts: 1, generation: 1, observedGeneration: 0, cache: { id: "h", grow: true, blob: "small" } });
    expect(view.lastError).toMatch(/CacheTooLargeError: .*5\d\d\d bytes of JSON; the limit is 1000 bytes.*maxCacheBytes/s);
    expect(view.dueAt!.getTime()).toBeGreaterThan(Date.now() + 20_000);
    // Fresh news that keeps the cache small succeeds at once, backoff or not.
    await bucket.notify(Object.assign(new Hoarder(), { id: "h", grow: false }));
    await waitFor("the successful run", () => runs.length >= 2);
    await quiesce(bucket, sql);
    expect(await bucket.matter(Hoarder, "h")).toMatchObject({ state: "ok", attempts: 0, lastError: null, cache: { id: "h", grow: false, blob: "tidy" } });
    await bucket.close();
    await work;
    await sql.close();
  });

  it("records CacheTooLargeError for a run that builds a cache of megabytes under the default limit, and keeps working", async () => {
    const bucket = await env.open(mode, { ...QUIET, logger: quietLogger() });
    class Glutton {
      id = "";
      blob = "";
      identity() {
        return this.id;
      }
      async materialize() {
        if (this.id === "greedy") this.blob = "🎵".repeat(4 * 1024 * 1024); // 16 MiB of UTF-8
      }
    }
    const stream = bucket.register("glutton", Glutton, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify([Object.assign(new Glutton(), { id: "greedy" }), Object.assign(new Glutton(), { id: "modest" })]);
    await waitFor("both runs", () => runs.length >= 2);
    const greedy = await waitFor("the failure to be recorded", async () => {
      const v = await bucket.matter(Glutton, "greedy");
      return v?.attempts === 1 ? v : undefined;
    });
    expect(greedy.cache).toEqual({ id: "greedy", blob: "" });
    expect(greedy.lastError).toMatch(/16777\d\d\d bytes of JSON; the limit is 262144 bytes/);
    expect(await bucket.matter(Glutton, "modest")).toMatchObject({ state: "ok" });
    await bucket.close();
    await work;
  });

  it("records InvalidCacheError naming the field, and keeps the stored cache, when a run leaves non-JSON in its cache", async () => {
    const bucket = await env.open(mode, { ...QUIET, logger: quietLogger() });
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    const bad: Record<string, [unknown, RegExp]> = {
      bigint: [10n, /bigint/],
      cycle: [{ a: [cycle] }, /cycle/],
      date: [new Date(0), /Date instance/],
      nan: [Number.NaN, /NaN/],
      fn: [() => 1, /function/],
      hole: [[1, undefined], /undefined \(or a hole\) inside an array/],
      symbol: [Symbol("s"), /symbol/],
      nul: ["a\u0000b", /NUL/],
      map: [new Map(), /Map instance/],
    };
    class Corrupter {
      id = "";
      value: unknown = "fine";
      identity() {
        return this.id;
      }
      async materialize() {
        this.value = bad[this.id]![0];
      }
    }
    const stream = bucket.register("corrupter", Corrupter, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.keys(bad).map((id) => Object.assign(new Corrupter(), { id })));
    await waitFor("every run", () => runs.length >= Object.keys(bad).length);
    for (const [id, [, message]] of Object.entries(bad)) {
      const run = runs.find((r) => r.identity === id)!;
      expect(run.outcome, id).toBe("fail");
      expect(run.error, id).toBeInstanceOf(InvalidCacheError);
      const view = await waitFor(`the failure of ${id}`, async () => {
        const v = await bucket.matter(Corrupter, id);
        return v?.attempts === 1 ? v : undefined;
      });
      expect(view.cache, id).toEqual({ id, value: "fine" });
      expect(view.lastError, id).toMatch(/InvalidCacheError: .*field "value/);
      expect(view.lastError, id).toMatch(message);
    }
    await bucket.close();
    await work;
  });

  it("records any non-Error value a materializer throws, and retries it", async () => {
    const bucket = await env.open(mode, { ...QUIET, logger: quietLogger() });
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    const thrown: Record<string, [unknown, string]> = {
      undef: [undefined, "Non-Error thrown: undefined"],
      nul: [null, "Non-Error thrown: null"],
      num: [42, "Non-Error thrown: 42"],
      sym: [Symbol("why"), "Non-Error thrown: Symbol(why)"],
      big: [10n, "Non-Error thrown: [object BigInt]"],
      cyc: [cycle, "Non-Error thrown: [object Object]"],
      tojson: [
        {
          toJSON() {
            throw new Error("toJSON refuses");
          },
        },
        "Non-Error thrown: [object Object]",
      ],
      bare: [Object.create(null), "Non-Error thrown: {}"],
      arr: [[1, "two"], 'Non-Error thrown: [1,"two"]'],
    };
    class Thrower {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt === 1) throw thrown[this.id]![0];
      }
    }
    const stream = bucket.register("thrower", Thrower, { backoffBaseMs: 30, backoffMaxMs: 60 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    const ids = Object.keys(thrown);
    await bucket.notify(ids.map((id) => Object.assign(new Thrower(), { id })));
    await waitFor("a retry of each", () => ids.every((id) => runs.some((r) => r.identity === id && r.outcome === "ok")));
    for (const [id, [, message]] of Object.entries(thrown)) {
      const fail = runs.find((r) => r.identity === id && r.outcome === "fail")!;
      expect(fail.error?.message, id).toBe(message);
      expect(runs.filter((r) => r.identity === id).map((r) => [r.outcome, r.attempt]), id).toEqual([
        ["fail", 1],
        ["ok", 2],
      ]);
    }
    await bucket.close();
    await work;
  });

  it("frees the slot of a run that ignores ctx.signal and never settles once it times out, so other identities run", async () => {
    const bucket = await env.open(mode, { ...QUIET, logger: quietLogger() });
    class Hang {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (this.id === "hang" && ctx.attempt === 1) await new Promise(() => {});
      }
    }
    const stream = bucket.register("hang", Hang, { timeoutMs: 200, backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 1 });
    await bucket.notify(Object.assign(new Hang(), { id: "hang" }));
    await waitFor("the hanging run to start", async () => (await bucket.matter(Hang, "hang"))?.state === "running");
    await bucket.notify(Array.from({ length: 5 }, (_, i) => Object.assign(new Hang(), { id: `next${i}` })));
    await waitFor("the other five runs", () => runs.filter((r) => r.identity.startsWith("next")).length >= 5);
    expect(runs[0]).toMatchObject({ identity: "hang", outcome: "fail" });
    expect(runs[0]!.error?.name).toBe("RunTimeoutError");
    expect(await bucket.matter(Hang, "hang")).toMatchObject({ state: "failing", attempts: 1 });
    await bucket.close();
    await work;
  });

  it("stores at most 8 000 characters of a huge error message, and materializers that throw synchronously or return non-promises", async () => {
    const bucket = await env.open(mode, { ...QUIET, logger: quietLogger() });
    class Odd {
      id = "";
      identity() {
        return this.id;
      }
      materialize(): Promise<void> {
        if (this.id === "huge") throw new Error(`${"'; drop table dmm.dmm_matter; --".repeat(40_000)}`);
        if (this.id === "sync") throw new TypeError("thrown before any promise");
        return 42 as unknown as Promise<void>;
      }
    }
    const stream = bucket.register("odd", Odd, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(["huge", "sync", "plain"].map((id) => Object.assign(new Odd(), { id })));
    await waitFor("three runs", () => runs.length >= 3);
    const huge = await waitFor("the huge failure", async () => {
      const v = await bucket.matter(Odd, "huge");
      return v?.attempts === 1 ? v : undefined;
    });
    expect(huge.lastError!.length).toBeLessThanOrEqual(8_001);
    expect(huge.lastError!.startsWith("Error: '; drop table dmm.dmm_matter; --'; drop table")).toBe(true);
    expect(await waitFor("the sync failure", async () => (await bucket.matter(Odd, "sync"))?.lastError)).toMatch(/^TypeError: thrown before any promise/);
    expect(await bucket.matter(Odd, "plain")).toMatchObject({ state: "ok" });
    await bucket.close();
    await work;
  });
});
