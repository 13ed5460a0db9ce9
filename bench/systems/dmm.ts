/**
 * dmm in its two dispatch modes, with its default settings except the ones the scenario fixes:
 * `concurrency: 16` per process, and the default `prefetch` (4 × concurrency claimed ahead).
 * - `dmm-nats`: tokens over NATS JetStream (relay in every worker process);
 * - `dmm-pg`: Postgres-only dispatch (outbox take fused into the claim, LISTEN/NOTIFY wake-up).
 * The app side notifies with `bucket.notify([...])`: one statement, one transaction per batch.
 */
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { migrate, open, type Context } from "dmm";
import type { Producer, System, Target } from "../lib/system.js";

/** The kind every benchmark matter belongs to. */
export const KIND = "bench";

/** The benchmark materializer: its identity is the key; the harness does the work and timing. */
export class BenchItem {
  key = "";
  identity() {
    return this.key;
  }
  async materialize(_ctx: Context): Promise<void> {
    await BenchItem.run(this.key);
  }
  /** Set by the worker child to the harness's `ctx.run`. */
  static run: (key: string) => Promise<void> = async () => {};
}

/** Rows inserted per statement when seeding existing matters. */
const SEED_CHUNK = 100_000;

function make(name: "dmm-nats" | "dmm-pg"): System {
  const nats = name === "dmm-nats";
  return {
    name,
    notes: [
      nats
        ? "dmm 0.1 with NATS JetStream dispatch: one token per identity (work-queue stream, `max_msgs_per_subject: 1`), or one batch token per up to 128 identities when a relay round finds 32 or more rows of a kind; relay publishing rounds of 500 rows and counting PubAcks (`dmm.relay_take`/`dmm.relay_settle`), pull consumer per kind; claims (`dmm.claim_keys`) and finishes (`dmm.finish_runs`) batched."
        : "dmm 0.1 with Postgres-only dispatch: workers take outbox rows and claim their matters in one call (`dmm.take_and_claim`, SKIP LOCKED), LISTEN/NOTIFY wake-up; claims and finishes batched.",
      "Runs from dmm's compiled package (`dist/`, built by `npm run bench` before it starts), as an app that installs dmm runs it; the peers run from their published packages.",
      "Defaults otherwise: `concurrency: 16`, `prefetch: \"auto\"` (512 claimed ahead while runs take under 10 ms), lease 30 s, heartbeat 10 s, sweep 10 s; pool of 10 connections plus one session connection per process.",
      "Enqueue: `bucket.notify(instances)` (one upsert statement per transaction of up to 500 matters; the outbox trigger fires in it).",
      "Coalescing: built in: one matter per identity; notifies during a run cause one more run.",
      "Scale: existing rows are clean matters of the same kind (generation = observed generation), inserted with triggers off.",
    ],
    workerScript: fileURLToPath(new URL(`./${name}.worker.ts`, import.meta.url)),
    async install(target) {
      await migrate(target.databaseUrl);
    },
    async openProducer(target: Target): Promise<Producer> {
      const bucket = await open(target.namespace, {
        database: target.databaseUrl,
        nats: nats ? target.natsUrl : undefined,
        logger: quiet,
      });
      bucket.register(KIND, BenchItem);
      const sql = postgres(target.databaseUrl, { max: 2, onnotice: () => {} });
      return {
        async enqueue(keys) {
          await bucket.notify(keys.map((key) => Object.assign(new BenchItem(), { key })));
        },
        async outstanding() {
          const [r] = await sql`select count(*)::int as n from dmm.dmm_matter
            where namespace = ${target.namespace} and (generation > observed_generation or lease_owner is not null)`;
          return r!.n as number;
        },
        async seedExisting(count) {
          for (let done = 0; done < count; done += SEED_CHUNK) {
            const n = Math.min(SEED_CHUNK, count - done);
            await sql.begin(async (tx) => {
              await tx`set local session_replication_role = replica`;
              await tx`insert into dmm.dmm_matter (namespace, kind, identity, cache, generation, observed_generation)
                       select ${target.namespace}, ${KIND}, 'seed-' || i, jsonb_build_object('key', 'seed-' || i), 1, 1
                       from generate_series(${done + 1}::int, ${done + n}::int) as i`;
            });
          }
          await sql`analyze dmm.dmm_matter`;
        },
        async close() {
          await bucket.close();
          await sql.end();
        },
      };
    },
    async dispose(target) {
      if (!nats) return;
      const nc = await connect({ servers: target.natsUrl });
      try {
        const jsm = await jetstreamManager(nc);
        await jsm.streams.delete(`dmm_${target.namespace}`).catch(() => {});
      } finally {
        await nc.close();
      }
    },
  };
}

/** dmm logs only errors during benchmarks. */
export const quiet = {
  debug() {},
  info() {},
  warn() {},
  error(msg: string, fields?: Record<string, unknown>) {
    process.stderr.write(`[dmm error] ${msg} ${JSON.stringify(fields ?? {})}\n`);
  },
  child() {
    return quiet;
  },
};

/** The systems this module provides. */
export const systems: System[] = [make("dmm-nats"), make("dmm-pg")];
