/**
 * The relay's in-flight mark. A relay marks the outbox rows it publishes (`relay_until`, no
 * transaction spans the publish); a relay that dies mid-round leaves its rows marked. A notify
 * on such a row must not wait out the mark: found by the chaos run as 10-second delays. And a
 * round's settle, which finds its rows by the row version its take marked.
 */
import { describe, expect, it } from "vitest";
import { drizzle } from "drizzle-orm/postgres-js";
import { sql as dsql } from "drizzle-orm";
import { notifyMatters, relayOutbox, touchMatters } from "../../src/store/index.js";
import type { BucketInternals } from "../../src/bucket.js";
import type { Context } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { streamName, tokenSubject } from "../../src/nats/subjects.js";
import postgres from "postgres";
import { NATS_URL, TEMPLATE_DB } from "../harness/env.js";
import { withScratchDatabase } from "../harness/scratch-db.js";
import { useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();

class Item {
  id = "";
  v = 0;
  identity() {
    return this.id;
  }
  async materialize(_ctx: Context) {}
}

describe("an outbox row a dead relay left in flight", () => {
  it("is available again as soon as a notify bumps it, and its next run follows without waiting for the mark", async () => {
    // A sweep and an in-flight time far beyond the test's wait: only the bump can make it run.
    const bucket = await env.open("nats", { sweepIntervalMs: 60_000 });
    const sql = env.sql();
    const stream = bucket.register("item", Item);
    const runs: RunEndEvent[] = [];
    (bucket as unknown as BucketInternals).onRunEnd = (e) => void runs.push(e);
    await bucket.notify(Object.assign(new Item(), { id: "a", v: 1 }));
    // What a relay that died while publishing leaves behind.
    await sql`update dmm.dmm_outbox set relay_until = now() + interval '1 hour' where namespace = ${bucket.namespace}`;
    await bucket.notify(Object.assign(new Item(), { id: "a", v: 2 }));
    const [row] = await sql`select relay_until, available_at <= now() as available, bumps from dmm.dmm_outbox where namespace = ${bucket.namespace}`;
    expect(row).toMatchObject({ relay_until: null, available: true, bumps: 1 });
    const work = stream.work();
    await waitFor("the run of generation 2", async () => {
      const [m] = await sql`select observed_generation::int as seen from dmm.dmm_matter where namespace = ${bucket.namespace}`;
      return m!.seen === 2;
    });
    expect(runs.filter((r) => r.outcome === "ok")).toHaveLength(1);
    await bucket.close();
    await work;
    await sql.close();
  });
});

describe("a relay round (relayOutbox)", () => {
  it("deletes what it published, keeps a row a notify bumped during the publish, and defers a refused one", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, ["a", "b", "c"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    const r = await relayOutbox(db, ns, 10, async (batch) => {
      expect(batch.map((row) => row.identity).sort()).toEqual(["a", "b", "c"]);
      // A notify of b commits while its token is on the way: b must get another token.
      await notifyMatters(db, ns, [{ kind: "k", identity: "b", cache: '{"v":2}' }]);
      return batch.map((row) => (row.identity === "c" ? "busy" : "ok"));
    });
    expect(r).toMatchObject({ taken: 3, dispatched: 2, deferred: 1 });
    const left = await sql`select identity, bumps, tries, relay_until is null as unmarked, available_at <= now() as available
                           from dmm.dmm_outbox where namespace = ${ns} order by identity`;
    expect(left).toEqual([
      { identity: "b", bumps: 1, tries: 0, unmarked: true, available: true },
      { identity: "c", bumps: 0, tries: 1, unmarked: true, available: false },
    ]);
    await sql.close();
  });

  it("does not wait for a row another transaction holds locked (a bump in the making), and leaves it marked", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, ["a", "b"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    const holder = await sql.reserve();
    const r = await relayOutbox(db, ns, 10, async (batch) => {
      await holder`begin`;
      await holder`select 1 from dmm.dmm_outbox where namespace = ${ns} and identity = 'a' for update`;
      return batch.map(() => "ok");
    });
    expect(r).toMatchObject({ taken: 2, dispatched: 2 });
    await holder`rollback`;
    holder.release();
    const left = await sql`select identity, relay_until is not null as marked from dmm.dmm_outbox where namespace = ${ns}`;
    expect(left).toEqual([{ identity: "a", marked: true }]);
    await sql.close();
  });
});

describe("the outbox row of a new matter", () => {
  it("is inserted once per new identity, and a deleted matter takes its pending row along, even one in flight at a relay", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, ["a", "b"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    const first = await sql`select identity, id::int, bumps from dmm.dmm_outbox where namespace = ${ns} order by identity`;
    expect(first.map((r) => [r.identity, r.bumps])).toEqual([["a", 0], ["b", 0]]);
    // The app deletes matter "a" while its row is being published by a relay.
    await sql`update dmm.dmm_outbox set relay_until = now() + interval '1 hour' where namespace = ${ns} and identity = 'a'`;
    await sql`delete from dmm.dmm_matter where namespace = ${ns} and identity = 'a'`;
    expect((await sql`select identity from dmm.dmm_outbox where namespace = ${ns}`).map((r) => r.identity)).toEqual(["b"]);
    // Notified again, "a" is a new matter with a new row (the insert does not look for an old one).
    await notifyMatters(db, ns, ["a", "c"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    const after = await sql`select identity, id::int, bumps, relay_until from dmm.dmm_outbox where namespace = ${ns} order by identity`;
    expect(after.map((r) => [r.identity, r.bumps, r.relay_until])).toEqual([["a", 0, null], ["b", 0, null], ["c", 0, null]]);
    expect(after[0]!.id).toBeGreaterThan(first[1]!.id);
    await sql.close();
  });

  it("is inserted or bumped by dmm's notify of an existing matter in one statement, while an app's own generation bump in the same transaction still goes through the row trigger", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    const outbox = async () =>
      (await sql`select identity, bumps from dmm.dmm_outbox where namespace = ${ns} order by identity`).map((r) => [r.identity, r.bumps]);
    await notifyMatters(db, ns, ["a", "b"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    await sql`delete from dmm.dmm_outbox where namespace = ${ns}`;
    // Existing matters, nothing pending: dmm.notify_matters makes their rows (migration 0023).
    await notifyMatters(db, ns, ["a", "b"].map((identity) => ({ kind: "k", identity, cache: '{"v":2}' })));
    expect(await outbox()).toEqual([["a", 0], ["b", 0]]);
    await touchMatters(db, ns, [{ kind: "k", identity: "a" }]);
    expect(await outbox()).toEqual([["a", 1], ["b", 0]]);
    const [cached] = await sql`select cache from dmm.dmm_matter where namespace = ${ns} and identity = 'a'`;
    expect(cached!.cache).toEqual({ v: 2 });
    await db.transaction(async (tx) => {
      await notifyMatters(tx, ns, [{ kind: "k", identity: "b", cache: "{}" }]);
      const [setting] = await tx.execute<{ v: string | null }>(dsql`select current_setting('dmm.enqueuing', true) as v`);
      expect(setting!.v).not.toBe("on");
      await tx.execute(dsql`update dmm.dmm_matter set generation = generation + 1 where namespace = ${ns} and identity = 'a'`);
    });
    expect(await outbox()).toEqual([["a", 2], ["b", 1]]);
    await sql.close();
  });

  it("goes with the matters when they are truncated, so notifying them again works", async () => {
    // A database of its own: the truncate takes every namespace's matters.
    await withScratchDatabase("truncate", `template "${TEMPLATE_DB}"`, async (url) => {
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      const db = drizzle(sql);
      const keys = ["a", "b"].map((identity) => ({ kind: "k", identity, cache: "{}" }));
      try {
        await notifyMatters(db, "ns", keys);
        await sql`truncate dmm.dmm_matter`;
        expect(await sql`select identity from dmm.dmm_outbox`).toHaveLength(0);
        await notifyMatters(db, "ns", keys);
        expect((await sql`select identity from dmm.dmm_outbox order by identity`).map((r) => r.identity)).toEqual(["a", "b"]);
      } finally {
        await sql.end();
      }
    });
  });
});

class Other extends Item {}

/** Records every message published on the "item" subjects of `namespace` (a core subscription sees each publish). */
async function recordPublishes(nc: NatsConnection, namespace: string) {
  const published: { subject: string; msgId: string | undefined }[] = [];
  const sub = nc.subscribe(`dmm.${namespace}.item.>`, { callback: (_err, msg) => void published.push({ subject: msg.subject, msgId: msg.headers?.get("Nats-Msg-Id") }) });
  await nc.flush();
  return { published, sub };
}

describe("the token of a notify that makes a few new matters", () => {
  it("goes out from the notification with the msgID of the relay's own publish, which JetStream drops: one token, one run", async () => {
    const bucket = await env.open("nats", { sweepIntervalMs: 60_000 });
    const items = bucket.register("item", Item);
    const others = bucket.register("other", Other);
    const runs: RunEndEvent[] = [];
    (bucket as unknown as BucketInternals).onRunEnd = (e) => void runs.push(e);
    const sql = env.sql();
    const nc = await connect({ servers: NATS_URL });
    try {
      const { published, sub } = await recordPublishes(nc, bucket.namespace);
      // This worker runs "other" only, so no runner of "item" could take a's row itself.
      const workOthers = others.work();
      // Once a first matter ran, the worker listens (it listens before its relay starts).
      await bucket.notify(Object.assign(new Other(), { id: "warm" }));
      await waitFor("the first run", () => runs.length === 1);
      await bucket.notify(Object.assign(new Item(), { id: "a" }));
      const subject = tokenSubject(bucket.namespace, "item", "a");
      // The early publish and the relay round's, each with the same msgID.
      await waitFor("two publishes of a's token", () => published.filter((p) => p.subject === subject).length >= 2);
      const ids = new Set(published.filter((p) => p.subject === subject).map((p) => p.msgId));
      expect(ids.size).toBe(1);
      expect([...ids][0]).toMatch(new RegExp(`^${bucket.namespace}:\\d+:0:\\d+$`));
      await waitFor("the outbox to empty", async () => (await sql`select 1 from dmm.dmm_outbox where namespace = ${bucket.namespace}`).length === 0);
      // JetStream stored one message: the second publish of a's token was a duplicate.
      const jsm = await jetstreamManager(nc);
      const info = await jsm.streams.info(streamName(bucket.namespace));
      expect(info.state.messages).toBe(1);
      const workItems = items.work();
      await waitFor("a's run", () => runs.some((r) => r.identity === "a"));
      expect(runs.map((r) => r.identity).sort()).toEqual(["a", "warm"]);
      sub.unsubscribe();
      await bucket.close();
      await Promise.all([workOthers, workItems]);
    } finally {
      await nc.close();
      await sql.close();
    }
  });

  it("is not needed when a runner of the kind is idle: the runner takes the outbox row itself, no token is published, one run", async () => {
    // No relay poll or sweep within the test: only the notification can start the run.
    const bucket = await env.open("nats", { sweepIntervalMs: 60_000, pollIntervalMs: 60_000 });
    const stream = bucket.register("item", Item);
    const runs: RunEndEvent[] = [];
    (bucket as unknown as BucketInternals).onRunEnd = (e) => void runs.push(e);
    const sql = env.sql();
    const nc = await connect({ servers: NATS_URL });
    try {
      const { published, sub } = await recordPublishes(nc, bucket.namespace);
      const work = stream.work();
      await bucket.notify(Object.assign(new Item(), { id: "warm" }));
      await waitFor("the first run", () => runs.length === 1);
      const before = published.length;
      for (const id of ["a", "b", "c"]) {
        await bucket.notify(Object.assign(new Item(), { id }));
        await waitFor(`${id}'s run`, () => runs.some((r) => r.identity === id));
      }
      await waitFor("the outbox to empty", async () => (await sql`select 1 from dmm.dmm_outbox where namespace = ${bucket.namespace}`).length === 0);
      expect(published.slice(before).map((p) => p.subject)).toEqual([]);
      expect(runs.map((r) => [r.identity, r.reason, r.outcome])).toEqual([
        ["warm", "notify", "ok"],
        ["a", "notify", "ok"],
        ["b", "notify", "ok"],
        ["c", "notify", "ok"],
      ]);
      sub.unsubscribe();
      await bucket.close();
      await work;
    } finally {
      await nc.close();
      await sql.close();
    }
  });
});
