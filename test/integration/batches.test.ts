/**
 * Batch tokens: a relay round that finds a backlog of a kind publishes one token per batch of
 * identities instead of one per identity. The batch message is settled once every identity of
 * it is: a busy identity is retried in the worker while the batch stays unacked, and a worker
 * that stops mid-batch hands the whole batch back.
 */
import { describe, expect, it } from "vitest";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import type { BucketInternals } from "../../src/bucket.js";
import type { Context } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { NATS_URL } from "../harness/env.js";
import { useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();

/** Long leases: heartbeats are not under test. */
const QUIET = { leaseMs: 120_000, heartbeatMs: 60_000, sweepIntervalMs: 600_000 };

class Item {
  id = "";
  identity() {
    return this.id;
  }
  async materialize(_ctx: Context) {
    await Item.hook(this.id);
  }
  static hook: (id: string) => Promise<void> = async () => {};
}

class Idle {
  id = "";
  identity() {
    return this.id;
  }
  async materialize() {}
}

function recordRuns(bucket: unknown): RunEndEvent[] {
  const events: RunEndEvent[] = [];
  (bucket as BucketInternals).onRunEnd = (e) => events.push(e);
  return events;
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => `i${String(i).padStart(3, "0")}`);

/** The subjects of a bucket's stream that hold a message, with their counts. */
/** How many messages `kind`'s consumer delivered, redeliveries included. */
async function deliveries(namespace: string, kind: string): Promise<number> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await jetstreamManager(nc);
    return (await jsm.consumers.info(`dmm_${namespace}`, `dmm_${kind}`)).delivered.consumer_seq;
  } finally {
    await nc.close();
  }
}

async function streamSubjects(namespace: string): Promise<Record<string, number>> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(`dmm_${namespace}`, { subjects_filter: ">" });
    return (info.state.subjects as Record<string, number> | undefined) ?? {};
  } finally {
    await nc.close();
  }
}

/**
 * Publishes the backlog of `keys` as tokens without running them: a bucket working another
 * kind runs the relay; waits until the outbox is empty.
 */
async function relayBacklog(keys: string[]): Promise<{ namespace: string; subjects: Record<string, number> }> {
  const relay = await env.open("nats", QUIET);
  const sql = env.sql();
  try {
    relay.register("item", Item);
    await relay.notify(keys.map((id) => Object.assign(new Item(), { id })));
    const work = relay.register("idle", Idle).work();
    await waitFor("the outbox to be relayed", async () => {
      const [r] = await sql`select count(*)::int as n from dmm.dmm_outbox where namespace = ${relay.namespace}`;
      return r!.n === 0;
    });
    await relay.close();
    await work;
    return { namespace: relay.namespace, subjects: await streamSubjects(relay.namespace) };
  } finally {
    await sql.close();
  }
}

describe("a backlog relayed as batch tokens", () => {
  it("runs every identity once, even on a worker with one run at a time and nothing claimed ahead", async () => {
    const keys = ids(300);
    const { namespace, subjects } = await relayBacklog(keys);
    const names = Object.keys(subjects);
    expect(names.length).toBeGreaterThanOrEqual(3);
    expect(names.length).toBeLessThan(10);
    expect(names.every((s) => s.startsWith(`dmm.${namespace}.item.batch.`))).toBe(true);

    const bucket = await env.open("nats", QUIET, namespace);
    const runs = recordRuns(bucket);
    const work = bucket.register("item", Item).work({ concurrency: 1, prefetch: 0 });
    await waitFor("300 runs", () => runs.length >= 300);
    await waitFor("every batch acked", async () => Object.keys(await streamSubjects(namespace)).length === 0);
    expect(runs.filter((r) => r.outcome === "ok").map((r) => r.identity).sort()).toEqual(keys);
    await bucket.close();
    await work;
  });

  it("retries an identity whose matter is locked in the worker, and acks the batch once it ran", async () => {
    const keys = ids(64);
    const { namespace } = await relayBacklog(keys);
    const sql = env.sql();
    const bucket = await env.open("nats", QUIET, namespace);
    const runs = recordRuns(bucket);
    // A transaction (a notify committing, say) holds two matters of the batch.
    const held = ["i010", "i050"];
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const holder = sql.begin(async (tx) => {
      await tx`select 1 from dmm.dmm_matter where namespace = ${namespace} and identity in ${tx(held)} for update`;
      locked();
      await released;
    });
    await isLocked;
    const work = bucket.register("item", Item).work({ concurrency: 4 });
    await waitFor("the 62 free identities to run", () => runs.length >= 62);
    expect(runs.map((r) => r.identity)).not.toContain("i010");
    expect(Object.keys(await streamSubjects(namespace))).toHaveLength(1);
    release();
    await holder;
    await waitFor("the held identities to run", () => runs.length >= 64);
    await waitFor("the batch acked", async () => Object.keys(await streamSubjects(namespace)).length === 0);
    expect(runs.map((r) => r.identity).sort()).toEqual(keys);
    expect(runs.every((r) => r.outcome === "ok")).toBe(true);
    // Retried in the worker: the batch itself was delivered once.
    expect(await deliveries(namespace, "item")).toBe(1);
    await bucket.close();
    await work;
    await sql.close();
  });

  it("goes back whole when its worker stops mid-batch, and another worker runs the rest", async () => {
    const keys = ids(100);
    const { namespace } = await relayBacklog(keys);
    let firstStarted!: () => void;
    const started = new Promise<void>((r) => (firstStarted = r));
    const never = new Promise<void>(() => {});
    Item.hook = async () => {
      firstStarted();
      await never;
    };
    try {
      const a = await env.open("nats", { ...QUIET, shutdownGraceMs: 0 }, namespace);
      const runsA = recordRuns(a);
      const workA = a.register("item", Item).work({ concurrency: 1, prefetch: 0 });
      await started;
      await a.close();
      await workA;
      expect(runsA.every((r) => r.outcome === "release")).toBe(true);
      Item.hook = async () => {};
      const b = await env.open("nats", QUIET, namespace);
      const runsB = recordRuns(b);
      const workB = b.register("item", Item).work({ concurrency: 4 });
      await waitFor("every identity to run on the second worker", () => new Set(runsB.filter((r) => r.outcome === "ok").map((r) => r.identity)).size === 100);
      await waitFor("the batch acked", async () => Object.keys(await streamSubjects(namespace)).length === 0);
      expect(runsB.filter((r) => r.outcome === "ok")).toHaveLength(100);
      await b.close();
      await workB;
    } finally {
      Item.hook = async () => {};
    }
  });
});
