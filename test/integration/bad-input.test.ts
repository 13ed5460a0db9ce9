/**
 * Invariant 7: every bad input gets a typed error that names the value and says what to do,
 * and nothing is written.
 */
import { describe, expect, it } from "vitest";
import { open } from "../../src/bucket.js";
import {
  CacheTooLargeError,
  ClosedError,
  ConfigError,
  InvalidCacheError,
  InvalidIdentityError,
  InvalidNameError,
  UnknownKindError,
  UnregisteredClassError,
} from "../../src/errors.js";
import { useTestEnvironment } from "../harness/setup.js";

const env = useTestEnvironment();

class Item {
  id = "";
  payload: unknown = null;
  identity() {
    return this.id;
  }
  async materialize() {}
}

class Stranger {
  id = "x";
  identity() {
    return this.id;
  }
  async materialize() {}
}

/** Rows of a namespace (all namespaces when omitted) in dmm's tables. */
async function matterCount(namespace?: string): Promise<number> {
  const sql = env.sql();
  const [r] = namespace
    ? await sql`select (select count(*) from dmm.dmm_matter where namespace = ${namespace})
                     + (select count(*) from dmm.dmm_outbox where namespace = ${namespace}) as n`
    : await sql`select (select count(*) from dmm.dmm_matter) + (select count(*) from dmm.dmm_outbox) as n`;
  await sql.close();
  return Number(r!.n);
}

describe("bad input", () => {
  it("refuses namespaces and kinds outside [a-z0-9_-]{1,64}, including SQL and subject syntax", async () => {
    for (const ns of ["", "Upper", "a.b", "a b", "x'; drop table dmm.dmm_matter; --", "*", ">", "a".repeat(65)]) {
      const err = await open(ns, { database: env.url }).catch((e: unknown) => e);
      expect(err, ns).toBeInstanceOf(InvalidNameError);
      expect((err as Error).message).toContain("a-z, 0-9");
    }
    const bucket = await env.open("postgres");
    for (const kind of ["", "Music", "mu.sic", "m*", "k'||pg_sleep(1)||'"]) {
      expect(() => bucket.register(kind, Item), kind).toThrow(InvalidNameError);
    }
    await bucket.close();
    expect(await matterCount()).toBe(0);
  });

  it("refuses empty, oversized, non-string and unstorable identities and writes nothing", async () => {
    const bucket = await env.open("postgres");
    bucket.register("item", Item);
    const cases: [unknown, RegExp][] = [
      ["", /is empty/],
      ["x".repeat(513), /513 bytes.*limit is 512/],
      ["é".repeat(257), /514 bytes/],
      [42, /must be a string/],
      ["a\u0000b", /NUL/],
      ["\ud800", /lone UTF-16 surrogate/],
    ];
    for (const [id, message] of cases) {
      const err = await bucket.notify(Object.assign(new Item(), { id })).catch((e: unknown) => e);
      expect(err, String(id)).toBeInstanceOf(InvalidIdentityError);
      expect((err as Error).message).toMatch(message);
      const touchErr = await bucket.touch(Item, id as string).catch((e: unknown) => e);
      expect(touchErr).toBeInstanceOf(InvalidIdentityError);
    }
    await bucket.notify(Object.assign(new Item(), { id: "x".repeat(512) }));
    expect(await matterCount(bucket.namespace)).toBe(2);
    await bucket.close();
  });

  it("refuses caches that are not faithful JSON, naming the field and the fix, and writes nothing", async () => {
    const bucket = await env.open("postgres");
    bucket.register("item", Item);
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    const cases: [unknown, RegExp][] = [
      [10n, /bigint.*toString/],
      [cycle, /cycle/],
      [() => 1, /function/],
      [new Date(0), /Date instance.*toISOString/],
      [Number.NaN, /NaN/],
      [Number.POSITIVE_INFINITY, /Infinity/],
      [{ nested: [1, undefined] }, /undefined \(or a hole\) inside an array/],
      [new Map(), /Map instance/],
      [Symbol("s"), /symbol/],
    ];
    for (const [payload, message] of cases) {
      const err = await bucket.notify(Object.assign(new Item(), { id: "c", payload })).catch((e: unknown) => e);
      expect(err, String(message)).toBeInstanceOf(InvalidCacheError);
      expect((err as Error).message).toMatch(/field "payload/);
      expect((err as Error).message).toMatch(message);
    }
    expect(await matterCount(bucket.namespace)).toBe(0);
    await bucket.close();
  });

  it("refuses a cache larger than maxCacheBytes", async () => {
    const bucket = await env.open("postgres", { maxCacheBytes: 1_000 });
    bucket.register("item", Item);
    const err = await bucket.notify(Object.assign(new Item(), { id: "big", payload: "x".repeat(2_000) })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CacheTooLargeError);
    expect((err as Error).message).toMatch(/limit is 1000 bytes.*maxCacheBytes/);
    expect(await matterCount(bucket.namespace)).toBe(0);
    await bucket.close();
  });

  it("writes nothing of a batch notify when one instance is bad", async () => {
    const bucket = await env.open("postgres");
    bucket.register("item", Item);
    const batch = [Object.assign(new Item(), { id: "ok-1" }), Object.assign(new Item(), { id: "bad", payload: 1n }), Object.assign(new Item(), { id: "ok-2" })];
    await expect(bucket.notify(batch)).rejects.toBeInstanceOf(InvalidCacheError);
    expect(await matterCount(bucket.namespace)).toBe(0);
    await bucket.close();
  });

  it("refuses unregistered classes and unknown kinds with the call that fixes it", async () => {
    const bucket = await env.open("postgres");
    bucket.register("item", Item);
    await expect(bucket.notify(new Stranger())).rejects.toThrow(UnregisteredClassError);
    await expect(bucket.notify(new Stranger())).rejects.toThrow(/bucket\.register\("<kind>", Stranger\)/);
    await expect(bucket.touch(Stranger, "x")).rejects.toThrow(UnregisteredClassError);
    await expect(bucket.matter(Stranger, "x")).rejects.toThrow(UnregisteredClassError);
    await expect(bucket.touch("nope", "x")).rejects.toThrow(UnknownKindError);
    await expect(bucket.touch("nope", "x")).rejects.toThrow(/registered: "item"/);
    await expect(bucket.notify({ identity: () => "x", materialize: async () => {} })).rejects.toThrow(UnregisteredClassError);
    expect(() => bucket.register("item", Stranger)).toThrow(/already registered/);
    expect(() => bucket.register("other", Item)).toThrow(/already registered as kind "item"/);
    expect(() => bucket.register("plain", {} as never)).toThrow(ConfigError);
    expect(await matterCount(bucket.namespace)).toBe(0);
    await bucket.close();
  });

  it("refuses bad options with the option's name, the value and the rule", async () => {
    await expect(open("app", undefined as never)).rejects.toThrow(ConfigError);
    await expect(open("app", {} as never)).rejects.toThrow(/needs the database option/);
    await expect(open("app", { database: "mysql://x" })).rejects.toThrow(/not a postgres:\/\/ URL/);
    await expect(open("app", { database: env.url, leaseMs: -1 })).rejects.toThrow(/leaseMs must be a finite number of at least 100; got -1/);
    await expect(open("app", { database: env.url, leaseMs: 1000, heartbeatMs: 2000 })).rejects.toThrow(/heartbeatMs \(2000\) must be shorter than leaseMs/);
    await expect(open("app", { database: env.url, nats: 42 })).rejects.toThrow(/nats option must be/);
    const bucket = await env.open("postgres");
    const stream = bucket.register("item", Item, { backoffBaseMs: 10 });
    await expect(stream.work({ concurrency: 0 })).rejects.toThrow(/concurrency.*got 0/);
    expect(() => bucket.register("timed", Stranger, { timeoutMs: 0 })).toThrow(/timeoutMs must be a positive number/);
    await bucket.close();
  });

  it("says the bucket is closed to calls after close()", async () => {
    const bucket = await env.open("postgres");
    bucket.register("item", Item);
    await bucket.close();
    await expect(bucket.notify(Object.assign(new Item(), { id: "late" }))).rejects.toBeInstanceOf(ClosedError);
    expect(() => bucket.register("late", Stranger)).toThrow(ClosedError);
  });

  it("stores identities with quotes, dots, wildcards and any Unicode faithfully in both dispatch modes", async () => {
    for (const mode of ["postgres", "nats"] as const) {
      const bucket = await env.open(mode);
      const seen: string[] = [];
      class Echo {
        id = "";
        identity() {
          return this.id;
        }
        async materialize() {
          seen.push(this.id);
        }
      }
      const stream = bucket.register("echo", Echo);
      const work = stream.work();
      const ids = ["it's", 'a"b', "a.b.c", "*", ">", "with space", "tab\there", "日本語", "🎵", "x'; drop table dmm.dmm_matter; --", "$1"];
      await bucket.notify(ids.map((id) => Object.assign(new Echo(), { id })));
      const deadline = Date.now() + 10_000;
      while (seen.length < ids.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(seen.sort()).toEqual([...ids].sort());
      for (const id of ids) expect((await bucket.matter(Echo, id))?.cache.id).toBe(id);
      await bucket.close();
      await work;
    }
  });
});
