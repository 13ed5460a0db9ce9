/**
 * Regression tests for hostile input and failure paths found by review: text Postgres cannot
 * store, hostile thrown values, touched-only matters, forged tokens, credentials in URLs, a
 * bare postgres.js client, maintenance without ownership, advisory locks in other databases.
 */
import { describe, expect, it } from "vitest";
import postgres from "postgres";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { startNatsServer } from "../../chaos/lib/index.js";
import { open, type BucketInternals } from "../../src/bucket.js";
import { ConnectionError } from "../../src/errors.js";
import type { Context, Logger } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { NATS_URL, TEST_DB_PREFIX, urlFor } from "../harness/env.js";
import { randomBytes } from "node:crypto";
import { migrate } from "../../src/bucket.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { deferred, waitFor } from "../harness/wait.js";

const env = useTestEnvironment();
const QUIET = { leaseMs: 120_000, heartbeatMs: 60_000 };
function memory(lines: string[]): Logger {
  const l: Logger = { debug() {}, info: (m) => void lines.push(m), warn: (m) => void lines.push(m), error: (m) => void lines.push(m), child: () => l };
  return l;
}
function recordRuns(bucket: unknown): RunEndEvent[] {
  const events: RunEndEvent[] = [];
  (bucket as BucketInternals).onRunEnd = (e) => events.push(e);
  return events;
}

/**
 * Runs `fn` with the URL of a least-privileged role on a fresh migrated database of its own:
 * the role may use dmm's tables and functions, nothing more; `ownerSql` runs first as the owner.
 * The database and the role are dropped afterwards.
 */
async function asRuntimeRole(tag: string, ownerSql: string, fn: (url: string) => Promise<void>): Promise<void> {
  const suffix = randomBytes(4).toString("hex");
  const database = `${TEST_DB_PREFIX}${tag}${suffix}`;
  const runtime = `dmm_${tag}_${suffix}`;
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${database}"`);
    await admin.unsafe(`create role "${runtime}" login password 'pw'`);
    await migrate(urlFor(database));
    const owner = postgres(urlFor(database), { max: 1, onnotice: () => {} });
    await owner.unsafe(`grant usage on schema dmm to "${runtime}";
      grant select, insert, update, delete on dmm.dmm_matter, dmm.dmm_outbox, dmm.dmm_worker to "${runtime}";
      grant select on dmm.dmm_migrations to "${runtime}"; grant execute on all functions in schema dmm to "${runtime}";
      ${ownerSql}`);
    await owner.end();
    const u = new URL(urlFor(database));
    u.username = runtime;
    u.password = "pw";
    await fn(u.toString());
  } finally {
    await admin.unsafe(`drop database if exists "${database}" with (force)`);
    await admin.unsafe(`drop role if exists "${runtime}"`);
    await admin.end();
  }
}

describe.each(MODES)("robustness with %s dispatch", (mode) => {
  it("records failures whose error text holds NUL or a lone surrogate like any other failure", async () => {
    const lines: string[] = [];
    const bucket = await env.open(mode, { ...QUIET, logger: memory(lines) });
    class Bad {
      id = "";
      data: unknown = null;
      identity() { return this.id; }
      async materialize() {
        if (this.id === "nul") throw new Error("bad\u0000byte");
        if (this.id === "split") throw new Error("🎵".repeat(5_000)); // the 8 000-character cut splits a pair
        if (this.id === "key") this.data = { ["k\u0000"]: 1 }; // InvalidCacheError quoting the key
      }
    }
    const stream = bucket.register("bad", Bad, { backoffBaseMs: 60_000 });
    const work = stream.work();
    await bucket.notify(["nul", "split", "key"].map((id) => Object.assign(new Bad(), { id })));
    for (const id of ["nul", "split", "key"]) {
      const view = await waitFor(`the failure of ${id}`, async () => {
        const v = await bucket.matter(Bad, id);
        return v?.attempts === 1 ? v : undefined;
      }, { timeoutMs: 5_000 });
      expect(view.state).toBe("failing");
    }
    expect(lines).not.toContain("finish:error");
    await bucket.close();
    await work;
  });

  it("contains a thrown Proxy and an Error whose message and stack getters throw (no unhandled rejection, failure recorded)", async () => {
    const bucket = await env.open(mode, QUIET);
    const thrown: Record<string, unknown> = {
      proxy: new Proxy({}, { getPrototypeOf() { throw new Error("trap"); }, get() { throw new Error("trap"); } }),
      getters: Object.create(Error.prototype, {
        message: { get() { throw new Error("no message"); } },
        stack: { get() { throw new Error("no stack"); } },
      }),
    };
    class Evil {
      id = "";
      identity() { return this.id; }
      async materialize() { throw thrown[this.id]; }
    }
    const stream = bucket.register("evil", Evil, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.keys(thrown).map((id) => Object.assign(new Evil(), { id })));
    await waitFor("both failures recorded", async () => {
      for (const id of Object.keys(thrown)) if ((await bucket.matter(Evil, id))?.attempts !== 1) return false;
      return true;
    }, { timeoutMs: 5_000 });
    expect(runs.map((r) => r.outcome)).toEqual(["fail", "fail"]);
    await bucket.close();
    await work;
  });

  it("runs an identity that was touched but never notified (its cache is {})", async () => {
    const bucket = await env.open(mode, QUIET);
    class Fresh {
      id = "";
      identity() { return this.id; }
      async materialize() {}
    }
    const stream = bucket.register("fresh", Fresh);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.touch(Fresh, "never-notified");
    await waitFor("the run", () => runs.length >= 1);
    expect(runs[0]!.error?.message).toBeUndefined();
    expect(runs[0]!.outcome).toBe("ok");
    await bucket.close();
    await work;
  });
});

describe("robustness", () => {
  it("discards a garbage token whose subject decodes to an identity with NUL, and keeps materializing", async () => {
    const lines: string[] = [];
    const bucket = await env.open("nats", { ...QUIET, logger: memory(lines) });
    class T {
      id = "";
      identity() { return this.id; }
      async materialize() {}
    }
    const stream = bucket.register("t", T);
    const runs = recordRuns(bucket);
    const work = stream.work();
    const nc = await connect({ servers: NATS_URL });
    await jetstream(nc).publish(`dmm.${bucket.namespace}.t.${Buffer.from("a\u0000b").toString("base64url")}`);
    await bucket.notify(Array.from({ length: 20 }, (_, i) => Object.assign(new T(), { id: `x${i}` })));
    await waitFor("20 runs", () => runs.length >= 20, { timeoutMs: 5_000 });
    expect(lines).not.toContain("claim:error");
    expect(lines).toContain("tokens:garbage");
    await nc.close();
    await bucket.close();
    await work;
  });

  it("never repeats credentials from a nats:// URL in a ConnectionError", async () => {
    const nats = await startNatsServer({ token: "t0ken-s3cret" });
    try {
      const err = await open(env.namespace(), { database: env.url, nats: `nats://wrong-s3cret@127.0.0.1:${nats.port}` }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectionError);
      expect((err as Error).message).not.toContain("wrong-s3cret");
    } finally {
      await nats.dispose();
    }
  });

  it("says ConnectionError when Postgres is unreachable or refuses TLS", async () => {
    await expect(open(env.namespace(), { database: "postgres://postgres@127.0.0.1:1/x" })).rejects.toBeInstanceOf(ConnectionError);
    await expect(open(env.namespace(), { database: `${env.url}?sslmode=require` })).rejects.toBeInstanceOf(ConnectionError);
  });

  it("leaves the app's own postgres.js client working as before when given it", async () => {
    const client = env.sql();
    const bucket = await open(env.namespace(), { database: client, ...QUIET });
    const [row] = await client`select ${client.json({ a: 1 })}::jsonb as j, ${new Date(0) as unknown as string}::timestamptz as t`;
    expect(row).toEqual({ j: { a: 1 }, t: new Date(0) });
    await bucket.close();
    await client.close();
  });
});

describe("robustness as a least-privileged role", () => {
  it("says once that it may not vacuum or analyze, instead of claiming to analyze on every sweep", async () => {
    await asRuntimeRole("vac", "", async (url) => {
      const lines: string[] = [];
      const bucket = await env.open("postgres", { ...QUIET, database: url, sweepIntervalMs: 100, logger: memory(lines) });
      class Many {
        id = "";
        identity() { return this.id; }
        async materialize() {}
      }
      const stream = bucket.register("many", Many);
      const work = stream.work();
      await bucket.notify(Array.from({ length: 1_500 }, (_, i) => Object.assign(new Many(), { id: `m${i}` })));
      await waitFor("a word about maintenance", () => lines.includes("sweep:vacuum:refused") || lines.filter((l) => l === "sweep:vacuum").length >= 3, { timeoutMs: 30_000 });
      expect(lines.filter((l) => l === "sweep:vacuum")).toEqual([]);
      expect(lines.filter((l) => l === "sweep:vacuum:refused")).toHaveLength(1);
      await bucket.close();
      await work;
    });
  });
});

describe("robustness when a new connection's first queries fail", () => {
  it("needs no array types from the driver, so no connection dmm opens runs the look-up whose failure postgres.js leaves unhandled", async () => {
    // postgres.js fetches array types on every new connection and drops that query's promise:
    // a connection terminated while it runs (a Postgres restart) crashed worker processes with
    // an unhandled rejection. Here the look-up fails on every connection, deterministically:
    // the role may not read pg_type in its database.
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => void unhandled.push(err);
    process.on("unhandledRejection", onUnhandled);
    try {
      await asRuntimeRole("notypes", "revoke select on pg_catalog.pg_type from public;", async (url) => {
        // Heartbeats often, so the session connection binds and reads its arrays too.
        const bucket = await env.open("nats", { database: url, leaseMs: 1_000, heartbeatMs: 100, logger: memory([]) });
        const runs = recordRuns(bucket);
        // Runs hold until a heartbeat has extended their leases (its arrays went through).
        const gate = deferred();
        let started = 0;
        class Held {
          id = "";
          identity() { return this.id; }
          async materialize() {
            started++;
            await gate.promise;
          }
        }
        const stream = bucket.register("held", Held);
        const work = stream.work();
        await bucket.notify(Array.from({ length: 20 }, (_, i) => Object.assign(new Held(), { id: `s${i}` })));
        await waitFor("runs to start", () => started > 0);
        const sql = postgres(url, { max: 1, onnotice: () => {}, fetch_types: false });
        const leaseOf = async () =>
          (await sql`select lease_until from dmm.dmm_matter where namespace = ${bucket.namespace} and lease_owner is not null order by identity limit 1`)[0]?.lease_until as Date | undefined;
        const first = await leaseOf();
        await waitFor("a heartbeat to extend the lease", async () => ((await leaseOf())?.getTime() ?? 0) > (first?.getTime() ?? Infinity));
        await sql.end();
        gate.resolve();
        await waitFor("20 runs", () => runs.length === 20, { timeoutMs: 20_000 });
        expect(runs.map((r) => r.outcome)).toEqual(Array(20).fill("ok"));
        await bucket.close();
        await work;
      });
      expect(unhandled.map((e) => String((e as Error)?.message ?? e))).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});

describe("robustness: the dead-worker check", () => {
  it("reaps a dead worker even while a session in another database holds an advisory lock with its key", async () => {
    const bucket = await env.open("postgres", { ...QUIET, deadWorkerCheckMs: 50 });
    class U { id = ""; identity() { return this.id; } async materialize() {} }
    const stream = bucket.register("u", U);
    const work = stream.work();
    const key = 123_456_789;
    const other = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} }); // another database, same cluster
    const [held] = await other`select pg_try_advisory_lock(6581613, ${key}) as ok`;
    expect(held!.ok).toBe(true);
    const sql = env.sql();
    await sql`insert into dmm.dmm_worker (id, namespace, lock_key, host, pid) values ('ghost', ${bucket.namespace}, ${key}, 'nowhere', 1)`;
    await waitFor("the ghost to be reaped", async () => (await sql`select 1 from dmm.dmm_worker where id = 'ghost'`).length === 0, { timeoutMs: 3_000 });
    await other.end();
    await sql.close();
    await bucket.close();
    await work;
  });
});
