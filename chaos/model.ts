/**
 * What the chaos run's processes share: the test materializer (`Tally`), the tables of the
 * run's own record (schema `chaos`), the worker configuration and the IPC messages between the
 * run and its worker processes.
 *
 * The record has three parts, each written in the same transaction as the thing it records, so
 * it can never disagree with Postgres about what committed:
 * - `chaos.notify_log`: one row per notify, inserted in the notifier's transaction (with the
 *   generation and value the notify produced, read back inside that transaction);
 * - `chaos.ledger`: one row per run, inserted by the materializer in a fenced `ctx.transaction`
 *   when the run starts and stamped `ended_at` in a second fenced transaction when it ends;
 * - `chaos.cache_writes`: one row per committed cache save of a run, written by a trigger on
 *   `dmm.dmm_matter` with the lease as it stood when the save committed (the zombie detector).
 */
import { randomUUID } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import { sql } from "drizzle-orm";
import type { Context } from "dmm";

/** The one kind every chaos namespace registers. */
export const KIND = "tally";

/** The chaos run's own tables and the audit trigger, created once after dmm's migrations. */
export const CHAOS_SCHEMA_SQL = `
create schema if not exists chaos;

create table if not exists chaos.notify_log (
  id bigserial primary key,
  namespace text not null,
  identity text not null,
  value bigint not null,
  generation bigint not null,
  at timestamptz not null
);
create index if not exists notify_log_key on chaos.notify_log (namespace, identity, generation);

create table if not exists chaos.ledger (
  token uuid primary key,
  namespace text not null,
  identity text not null,
  epoch bigint not null,
  owner text not null,
  generation bigint not null,
  value bigint,
  prev_token uuid,
  reason text not null,
  attempt int not null,
  pid int not null,
  slot int not null,
  started_at timestamptz not null,
  ended_at timestamptz
);
create index if not exists ledger_key on chaos.ledger (namespace, identity, started_at);

create table if not exists chaos.cache_writes (
  id bigserial primary key,
  namespace text not null,
  identity text not null,
  token uuid,
  run_epoch bigint,
  run_owner text,
  lease_epoch bigint,
  lease_owner text,
  lease_until timestamptz,
  tx_now timestamptz not null,
  at timestamptz not null
);

-- Fires on every committed cache save that carries a new run token. OLD holds the lease as it
-- stood when the save was written: a save from a run that no longer held its lease (another
-- epoch or owner, or an expired lease at the transaction's now(), which is what dmm's fence
-- compares with) is a zombie write.
create or replace function chaos.audit_cache_write() returns trigger language plpgsql as $$
begin
  insert into chaos.cache_writes (namespace, identity, token, run_epoch, run_owner, lease_epoch, lease_owner, lease_until, tx_now, at)
  values (new.namespace, new.identity, (new.cache->>'runToken')::uuid, (new.cache->>'runEpoch')::bigint, new.cache->>'runOwner',
          old.lease_epoch, old.lease_owner, old.lease_until, now(), clock_timestamp());
  return null;
end;
$$;
drop trigger if exists zz_chaos_audit on dmm.dmm_matter;
create trigger zz_chaos_audit after update of cache on dmm.dmm_matter
  for each row when (new.cache ? 'runToken' and (new.cache->'runToken') is distinct from (old.cache->'runToken'))
  execute function chaos.audit_cache_write();
`;

/** How long a run of the test materializer works, drawn per run. */
export interface WorkProfile {
  /** Probability that a run is long (spans several heartbeats). */
  longChance: number;
  /** Bounds of a short run's work, ms. */
  shortMs: [number, number];
  /** Bounds of a long run's work, ms. */
  longMs: [number, number];
}

/** The fields of a Tally's cache. */
export interface TallyCache {
  id: string;
  /** Set by the notifier: the newest value of reality. */
  value: number;
  /** Set by runs: the value the last successful run applied. */
  applied?: number;
  /** The ledger token, lease epoch and owner of the run that last saved this cache. */
  runToken?: string;
  runEpoch?: number;
  runOwner?: string;
}

/** A Tally class as the notifier uses it: only the fields matter, never `materialize`. */
export class TallyNote {
  id = "";
  value = 0;
  identity(): string {
    return this.id;
  }
  materialize(): void {
    throw new Error("The notifier's Tally class never runs; worker processes run their own.");
  }
}

/**
 * Returns the test materializer for one namespace. A run:
 * 1. records its start in a fenced `ctx.transaction` (ledger row with the lease epoch and owner
 *    read under the fence, the generation and value it saw, the token of the run whose cache it
 *    saw, `clock_timestamp()`);
 * 2. works for a while (mostly milliseconds, sometimes seconds: long enough to be killed,
 *    partitioned or to lose its lease mid-run), stopping when `ctx.signal` aborts;
 * 3. records its end in a second fenced transaction, and
 * 4. returns with `applied = value` and its token, epoch and owner in its cache.
 * Writes of a run that lost its lease must fail in steps 1 and 3 (LeaseLostError) and in the
 * finish; the checks verify that none committed.
 */
export function makeTally(namespace: string, slot: number, profile: WorkProfile, random: () => number = Math.random) {
  return class Tally implements TallyCache {
    id = "";
    value = 0;
    applied?: number;
    runToken?: string;
    runEpoch?: number;
    runOwner?: string;

    identity(): string {
      return this.id;
    }

    async materialize(ctx: Context): Promise<void> {
      const token = randomUUID();
      const started = await ctx.transaction(async (tx) => {
        const rows = (await tx.execute(sql`
          insert into chaos.ledger (token, namespace, identity, epoch, owner, generation, value, prev_token, reason, attempt, pid, slot, started_at)
          select ${token}::uuid, m.namespace, m.identity, m.lease_epoch, m.lease_owner, ${ctx.generation}, ${this.value},
                 ${this.runToken ?? null}::uuid, ${ctx.reason}, ${ctx.attempt}, ${process.pid}, ${slot}, clock_timestamp()
          from dmm.dmm_matter m
          where m.namespace = ${namespace} and m.kind = ${KIND} and m.identity = ${this.id}
          returning epoch::text, owner`)) as unknown as { epoch: string; owner: string }[];
        if (rows.length !== 1) throw new Error(`the matter ${namespace}/${this.id} vanished under a fenced transaction`);
        return rows[0]!;
      });
      const long = random() < profile.longChance;
      const [lo, hi] = long ? profile.longMs : profile.shortMs;
      const workMs = lo + random() * (hi - lo);
      if (workMs > 0) await delay(workMs, undefined, { signal: ctx.signal });
      await ctx.transaction(async (tx) => {
        const rows = (await tx.execute(sql`update chaos.ledger set ended_at = clock_timestamp() where token = ${token}::uuid returning 1`)) as unknown as unknown[];
        if (rows.length !== 1) throw new Error(`the ledger row of run ${token} is missing`);
      });
      this.applied = this.value;
      this.runToken = token;
      this.runEpoch = Number(started.epoch);
      this.runOwner = started.owner;
    }
  };
}

/** Timings and sizes of a worker process's buckets. */
export interface WorkerTimings {
  leaseMs: number;
  heartbeatMs: number;
  sweepIntervalMs: number;
  deadWorkerCheckMs: number;
  pollIntervalMs: number;
  natsFallbackMs: number;
  shutdownGraceMs: number;
  poolSize: number;
  concurrency: number;
  backoffMaxMs: number;
}

/** One bucket a worker process opens. */
export interface WorkerBucket {
  namespace: string;
  /** True: JetStream dispatch (through the slot's NATS proxy); false: Postgres-only dispatch. */
  nats: boolean;
}

/** What a worker process is told at spawn, as JSON in `CHAOS_WORKER`. */
export interface WorkerConfig {
  slot: number;
  incarnation: number;
  /** Postgres URL through the slot's proxy. */
  database: string;
  /** NATS URL through the slot's proxy. */
  nats: string;
  buckets: WorkerBucket[];
  /** Where a `self` relay kill writes what it killed, synchronously, just before SIGKILL. */
  killFile: string;
  timings: WorkerTimings;
  profile: WorkProfile;
}

/** Counters of one bucket in a worker process (dmm's `bucket.stats()` plus the fallback flag). */
export interface BucketCounters {
  runs: number;
  succeeded: number;
  failed: number;
  parked: number;
  leaseLost: number;
  swept: number;
  reapedWorkers: number;
  natsFallback: boolean;
}

/** Messages from a worker process to the run. */
export type WorkerMessage =
  | { type: "ready"; openMs: number }
  | { type: "stats"; buckets: Record<string, BucketCounters> }
  /** The relay's publish was acknowledged by JetStream and the process now stops before deleting the outbox row. */
  | {
      type: "published";
      namespace: string;
      msgId: string;
      how: RelayKillHow;
      /** The token's identity (from its subject; a batch token's first identity). */
      identity?: string;
      /** The outbox row the token was relayed from (a batch token's first row). */
      rowId: number;
    }
  /** The relay hook found nothing to hook in this process: relay kills cannot land here. */
  | { type: "hook-missing" };

/** How a relay kill lands: SIGKILL at once after the PubAck, or after the outbox delete is blocked by a half-open Postgres link. */
export type RelayKillHow = "self" | "blocked";

/** Messages from the run to a worker process. */
export type RunMessage = { type: "arm"; how: RelayKillHow } | { type: "disarm" } | { type: "continue" };
