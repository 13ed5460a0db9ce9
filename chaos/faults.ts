/**
 * Fault injection for the chaos run: what each fault does, how long it lasts and how it heals.
 * Two loops run side by side until their deadline: one kills worker processes (plain `kill -9`
 * and relay kills between a token's PubAck and its outbox delete), the other breaks the
 * infrastructure (Postgres backends terminated, Postgres restarted or crashed, NATS restarted
 * or crashed and its tokens purged, half-open links to Postgres or NATS). Each loop draws its
 * faults from a shuffled bag, so that every kind occurs in every round of the bag however short
 * the run, and then waits a random gap.
 */
import { setTimeout as delay } from "node:timers/promises";
import postgres from "postgres";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsServer, PostgresServer, Random } from "./lib/index.js";
import type { Fleet } from "./fleet.js";
import type { RelayKillHow, WorkerMessage } from "./model.js";

/** Every kind of fault the run injects. */
export const FAULT_KINDS = [
  "worker-kill",
  "relay-kill-after-publish",
  "relay-kill-blocked-delete",
  "pg-terminate-backends",
  "pg-restart",
  "pg-crash",
  "pg-half-open",
  "nats-restart",
  "nats-crash",
  "token-purge",
  "nats-half-open",
] as const;

/** A kind of fault; see {@link FAULT_KINDS}. */
export type FaultKind = (typeof FAULT_KINDS)[number];

/** One injected fault. */
export interface FaultRecord {
  kind: FaultKind;
  /** Ms since the run's faults started. */
  at: number;
  /** How long the fault lasted until healed, ms. */
  durationMs: number;
  /** Worker slot(s) affected, if any. */
  slots?: number[];
  detail?: string;
}

/** Options of {@link FaultInjector}. */
export interface FaultOptions {
  pg: PostgresServer;
  nats: NatsServer;
  fleet: Fleet;
  random: Random;
  /** Worker slots with at least one JetStream-dispatch bucket (they run a relay to kill). */
  natsSlots: number[];
  /** Weights (whole numbers: copies per bag) of the process faults and of the infrastructure faults. */
  processBag: Partial<Record<FaultKind, number>>;
  infraBag: Partial<Record<FaultKind, number>>;
  /** Random gap between two process faults, and between two infrastructure faults, ms. */
  processGapMs: [number, number];
  infraGapMs: [number, number];
  /** Called with a line for each fault, for live progress. */
  onFault?(record: FaultRecord): void;
}

/** A fault that was attempted but could not land (e.g. no relay published in time). */
export interface FaultMiss {
  kind: FaultKind;
  reason: string;
}

/** Injects faults; see the module comment. */
export class FaultInjector {
  readonly records: FaultRecord[] = [];
  readonly misses: FaultMiss[] = [];
  /** Outbox rows left behind by relay kills: each must be present right after the kill. */
  readonly relayKillRows: { namespace: string; rowId: number; presentAfterKill: boolean | null }[] = [];
  #t0 = Date.now();
  #admin: postgres.Sql;
  #published = new Map<number, (msg: Extract<WorkerMessage, { type: "published" }> | null) => void>();
  #stop = false;
  #lastHealAt = 0;

  constructor(private readonly o: FaultOptions) {
    this.#admin = postgres(o.pg.url, { max: 1, onnotice: () => {}, connect_timeout: 3, fetch_types: false, connection: { application_name: "chaos:admin" } });
  }

  /** Wall time when the most recent fault was healed. */
  get lastHealAt(): number {
    return this.#lastHealAt;
  }

  /** Routes a worker's `published` message to the relay kill waiting for it. */
  onWorkerMessage(slot: number, msg: WorkerMessage): void {
    if (msg.type === "hook-missing") {
      this.#published.get(slot)?.(null);
      this.misses.push({ kind: "relay-kill-after-publish", reason: "the worker found no PubAck subscription to hook" });
      return;
    }
    if (msg.type !== "published") return;
    const waiter = this.#published.get(slot);
    if (waiter) {
      waiter(msg);
      return;
    }
    // Armed, then disarmed too late: the worker published meanwhile. Let a "blocked" one go on;
    // a "self" one is dead already, so restart it like any killed worker.
    if (msg.how === "blocked") this.o.fleet.send(slot, { type: "continue" });
    else {
      this.o.fleet.scheduleRestart(slot, 1_000);
      this.misses.push({ kind: "relay-kill-after-publish", reason: "landed after its 8 s window (worker restarted)" });
    }
  }

  /** Runs both fault loops until `durationMs` from now; resolves when their last fault healed. */
  async run(durationMs: number): Promise<void> {
    this.#t0 = Date.now();
    const until = this.#t0 + durationMs;
    await Promise.all([this.#loop(this.o.processBag, this.o.processGapMs, until), this.#loop(this.o.infraBag, this.o.infraGapMs, until)]);
  }

  /** Stops the loops after their current fault. */
  stop(): void {
    this.#stop = true;
  }

  /**
   * Heals everything: every proxy forwards, both servers run, every worker slot has a process.
   * Returns when all that is true (bounded by the servers' own start timeouts).
   */
  async healAll(): Promise<void> {
    for (const slot of this.o.fleet.slots) {
      slot.pgProxy.setMode("forward");
      slot.natsProxy.setMode("forward");
    }
    if (!this.o.pg.running) await this.o.pg.start();
    if (!this.o.nats.running) await this.o.nats.start();
    for (const slot of this.o.fleet.slots) if (!this.o.fleet.alive(slot.index)) this.o.fleet.start(slot.index);
    this.#lastHealAt = Date.now();
  }

  /** Closes the admin connection. */
  async close(): Promise<void> {
    await this.#admin.end({ timeout: 1 }).catch(() => {});
  }

  async #loop(weights: Partial<Record<FaultKind, number>>, gapMs: [number, number], until: number): Promise<void> {
    const r = this.o.random;
    let bag: FaultKind[] = [];
    while (!this.#stop && Date.now() < until) {
      if (bag.length === 0) {
        bag = r.sample(
          (Object.entries(weights) as [FaultKind, number][]).flatMap(([k, w]) => Array.from({ length: w }, () => k)),
          Number.MAX_SAFE_INTEGER,
        );
        if (bag.length === 0) return;
      }
      const kind = bag.pop()!;
      const started = Date.now();
      try {
        const rec = await this.#inject(kind);
        if (rec) {
          const record: FaultRecord = { kind, at: started - this.#t0, durationMs: Date.now() - started, ...rec };
          this.records.push(record);
          this.#lastHealAt = Date.now();
          this.o.onFault?.(record);
        }
      } catch (err) {
        this.misses.push({ kind, reason: `injection failed: ${(err as Error).message}` });
      }
      const gap = r.between(gapMs[0], gapMs[1]);
      const left = until - Date.now();
      if (left <= 0) break;
      await delay(Math.min(gap, left));
    }
  }

  /** Injects one fault and heals it; returns what to record, or undefined when it could not land. */
  async #inject(kind: FaultKind): Promise<Omit<FaultRecord, "kind" | "at" | "durationMs"> | undefined> {
    const { fleet, random: r, pg, nats } = this.o;
    const alive = fleet.slots.filter((s) => fleet.alive(s.index) && !s.starting).map((s) => s.index);
    switch (kind) {
      case "worker-kill": {
        if (alive.length === 0) return this.#miss(kind, "no worker alive");
        const slot = r.pick(alive);
        await fleet.kill(slot, r.between(300, 2_000));
        return { slots: [slot] };
      }
      case "relay-kill-after-publish":
      case "relay-kill-blocked-delete": {
        const candidates = alive.filter((i) => this.o.natsSlots.includes(i));
        if (candidates.length === 0) return this.#miss(kind, "no NATS-dispatch worker alive");
        const slot = r.pick(candidates);
        return this.#relayKill(kind, slot, kind === "relay-kill-after-publish" ? "self" : "blocked");
      }
      case "pg-terminate-backends": {
        const withNotifier = r.chance(0.3);
        const share = r.pick([0.3, 0.6, 1]);
        const rows = await withTimeout(
          this.#admin<{ n: number }[]>`
            select count(*)::int as n from (
              select pg_terminate_backend(pid) from pg_stat_activity
              where pid <> pg_backend_pid()
                and (application_name like 'dmm%' or (${withNotifier} and application_name = 'chaos:notifier'))
                and random() < ${share}) t`,
          5_000,
        );
        return { detail: `${rows[0]?.n ?? 0} backends (share ${share}${withNotifier ? ", notifier too" : ""})` };
      }
      case "pg-restart": {
        await pg.restart();
        return { detail: "fast shutdown and start" };
      }
      case "pg-crash": {
        await pg.kill();
        await delay(r.between(200, 1_500));
        await pg.start();
        return { detail: "SIGKILL of every backend, WAL replay on start" };
      }
      case "pg-half-open":
      case "nats-half-open": {
        const all = r.chance(0.25);
        const slots = all ? fleet.slots.map((s) => s.index) : [r.pick(fleet.slots).index];
        const proxies = slots.map((i) => (kind === "pg-half-open" ? fleet.slots[i]!.pgProxy : fleet.slots[i]!.natsProxy));
        const holdMs = kind === "pg-half-open" ? r.between(1_000, 6_000) : r.between(2_000, 10_000);
        const drop = r.chance(0.5);
        for (const p of proxies) p.setMode("blackhole");
        await delay(holdMs);
        for (const p of proxies) {
          if (drop) p.dropAll();
          p.setMode("forward");
        }
        return { slots, detail: `${Math.round(holdMs)} ms, healed ${drop ? "with resets (peers gave up)" : "by delivering the held bytes"}` };
      }
      case "nats-restart":
      case "nats-crash": {
        if (kind === "nats-restart") await nats.stop();
        else await nats.kill();
        await delay(r.between(500, 4_000));
        await nats.start();
        const purged = await this.#purge();
        return { detail: `down and back, then ${purged} tokens purged` };
      }
      case "token-purge": {
        const purged = await this.#purge();
        return { detail: `${purged} tokens purged` };
      }
    }
  }

  #miss(kind: FaultKind, reason: string): undefined {
    this.misses.push({ kind, reason });
    return undefined;
  }

  /**
   * Arms slot `slot`'s relay to stop right after its next token's PubAck, and waits (up to 8 s)
   * for that to happen. `self`: the worker SIGKILLs itself at once. `blocked`: the run cuts the
   * worker's Postgres link (blackhole), lets the relay go on into its outbox delete, SIGKILLs the
   * worker while that delete hangs, and keeps the dead worker's connections half-open a while
   * longer (Postgres still sees its session and advisory lock) before resetting them.
   */
  async #relayKill(kind: FaultKind, slot: number, how: RelayKillHow): Promise<Omit<FaultRecord, "kind" | "at" | "durationMs"> | undefined> {
    const { fleet, random: r } = this.o;
    const got = new Promise<Extract<WorkerMessage, { type: "published" }> | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), 8_000);
      this.#published.set(slot, (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
    if (!fleet.send(slot, { type: "arm", how })) {
      this.#published.delete(slot);
      return this.#miss(kind, "worker not reachable");
    }
    const msg = await got;
    this.#published.delete(slot);
    if (!msg) {
      fleet.send(slot, { type: "disarm" });
      return this.#miss(kind, "no token published within 8 s");
    }
    const rowId = msg.rowId;
    const proxy = fleet.slots[slot]!.pgProxy;
    if (how === "self") {
      await fleet.kill(slot, undefined, true);
    } else {
      proxy.setMode("blackhole");
      fleet.send(slot, { type: "continue" });
      await delay(r.between(300, 1_000));
      await fleet.kill(slot);
    }
    const present = await this.#outboxRowPresent(rowId);
    this.relayKillRows.push({ namespace: msg.namespace, rowId, presentAfterKill: present });
    if (how === "blocked") {
      await delay(r.between(1_000, 3_000));
      proxy.dropAll();
      proxy.setMode("forward");
    }
    fleet.scheduleRestart(slot, r.between(300, 2_000));
    return {
      slots: [slot],
      detail: `outbox row ${rowId} of ${msg.namespace}${msg.identity ? ` (${msg.identity})` : ""} ${present === null ? "unknown" : present ? "left behind" : "already gone"}`,
    };
  }

  async #outboxRowPresent(id: number): Promise<boolean | null> {
    try {
      const rows = await withTimeout(this.#admin<{ n: number }[]>`select count(*)::int as n from dmm.dmm_outbox where id = ${id}`, 3_000);
      return (rows[0]?.n ?? 0) > 0;
    } catch {
      return null;
    }
  }

  /** Purges every stream of the private NATS server (all tokens lost); returns how many were purged. */
  async #purge(): Promise<number> {
    const nc = await connect({ servers: this.o.nats.url, timeout: 3_000, reconnect: false });
    try {
      const jsm = await jetstreamManager(nc);
      let purged = 0;
      for await (const name of jsm.streams.names()) purged += (await jsm.streams.purge(name)).purged;
      return purged;
    } finally {
      await nc.close().catch(() => {});
    }
  }
}

/** Rejects with a timeout error if `p` has not settled after `ms`. */
export async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
