/**
 * `open()` and the `Bucket`: the one place that wires the store, NATS, the relay and the
 * worker engine together.
 */
import { randomUUID } from "node:crypto";
import { checkIdentity, checkName, encodeCache } from "./codec.js";
import { ClosedError, ConfigError, ConnectionError, DmmError, LeaseLostError } from "./errors.js";
import { resolveOptions, type OpenOptions, type ResolvedOptions } from "./options.js";
import { Registry, type KindEntry, type KindOptions } from "./registry.js";
import type { DrizzleExecutor, Materializer, MaterializerClass, MatterView } from "./types.js";
import {
  applyMigrations,
  checkSchemaVersion,
  claimKeys,
  enqueueMatters,
  finishRuns,
  guardedTransaction,
  holdLease,
  notifyMatters,
  openDatabase,
  readMatter,
  redact,
  listMatters,
  reapDeadWorkers,
  registerWorker,
  relayOutbox,
  sweepMatters,
  takeAndClaim,
  vacuumIfBloated,
  touchMatters,
  type Database,
  type DatabaseInput,
  type MatterRow,
  type NotifyItem,
  type TouchItem,
} from "./store/index.js";
import { openTokens, type NatsInput, type Tokens } from "./nats/index.js";
import { Engine, runKind, type EngineStats, type RunEndEvent } from "./worker/engine.js";
import { createOutboxSource, createSwitchingSource, createTokenSource, type SwitchingSource, type WakeableSource } from "./worker/sources.js";
import type { ContextDeps } from "./worker/context.js";
import { startRelay, type Relay } from "./relay/relay.js";
import { relayMessages } from "./relay/batches.js";
import { sleep, untilAborted } from "./async.js";

/**
 * Longest a relay wake-up waits for the outbox takes offered to idle runners (see
 * #onOutboxRows); they normally settle within a round trip.
 */
const RELAY_WAKE_HOLD_MS = 50;

/** Options of `stream.work()`. */
export interface WorkOptions {
  /** Most runs of this kind at once in this process. Defaults to 16. */
  concurrency?: number;
  /**
   * Matters claimed ahead of free run slots and held in a local buffer, so that under load one
   * claim statement serves a batch. Buffered matters hold leases; they are released unrun on
   * stop. 0 claims only for free slots. Defaults to `"auto"`: up to 512 (or 4 × concurrency, at most 1000) ahead while runs take
   * under 10 ms, 4 × concurrency under 100 ms, and `concurrency` for slower runs.
   */
  prefetch?: number | "auto";
  /** Stops this stream (in-flight runs finish first) when aborted. */
  signal?: AbortSignal;
}

/** Options of `notify` and `touch`. */
export interface WriteOptions {
  /**
   * A Drizzle transaction (or database) of the app, on postgres.js: the notify commits or rolls
   * back with it. Defaults to dmm's own connection (autocommit).
   */
  tx?: DrizzleExecutor;
}

/** A registered kind: where its workers are started. */
export interface WorkStream<M extends Materializer = Materializer> {
  readonly kind: string;
  readonly cls: MaterializerClass<M>;
  /**
   * Works this kind until the bucket closes or `signal` aborts: claims matters that need a run,
   * runs them (at most `concurrency` at once) and finishes them. Resolves when stopped and its
   * runs have settled.
   */
  work(options?: WorkOptions): Promise<void>;
}

/** One `open(namespace)`: its own rows, its own NATS stream, its kinds. */
export interface Bucket {
  readonly namespace: string;
  /** "nats" when tokens travel over JetStream, "postgres" for Postgres-only dispatch. */
  readonly dispatch: "nats" | "postgres";
  /**
   * True while this process dispatches through Postgres because NATS is unreachable (only with
   * `nats` configured).
   */
  readonly natsFallback: boolean;
  /** Declares a kind and the class that materializes it. */
  register<M extends Materializer>(kind: string, cls: MaterializerClass<M>, options?: KindOptions): WorkStream<M>;
  /**
   * Replaces the cache of each instance with its own fields and requests a run. With
   * `{ tx }`, commits or rolls back with the app's transaction. Accepts one instance or an
   * array (one statement for all).
   */
  notify(instance: Materializer | Materializer[], options?: WriteOptions): Promise<void>;
  /**
   * Requests a run of `identity`, keeping its cache (a new matter starts with `{}`). The kind
   * is given by its class or by its registered name.
   */
  touch(kind: MaterializerClass | string, identity: string, options?: WriteOptions): Promise<void>;
  /** The matter's cache and status, or undefined when it was never notified. */
  matter<M extends Materializer>(kind: MaterializerClass<M> | string, identity: string): Promise<MatterView<M> | undefined>;
  /** Every matter of the bucket (optionally one kind), for status pages; at most `limit` (1000). */
  matters(options?: { kind?: string; limit?: number }): Promise<MatterView[]>;
  /** Counters of this process's worker: runs, successes, failures, sweeps. */
  stats(): EngineStats;
  /**
   * Stops every stream, waits up to `shutdownGraceMs` for runs in flight (then aborts them and
   * releases their leases), and disconnects. Safe to call twice and from a signal handler.
   */
  close(): Promise<void>;
}

/** Test and benchmark hooks; not part of the stable API. @internal */
export interface BucketInternals {
  readonly db: Database;
  readonly tokens: Tokens | null;
  readonly options: ResolvedOptions;
  onRunEnd?: (event: RunEndEvent) => void;
  /** Relays every available outbox row now (NATS dispatch only). */
  relayNow(): Promise<number>;
  /** Runs one sweep pass now. */
  sweepNow(): Promise<number>;
  workerId(): string | null;
}

/**
 * Opens a bucket on `namespace` (`[a-z0-9_-]{1,64}`). Checks that the database's dmm schema
 * matches this version (or applies it with `{ migrate: true }`), and with `nats` set makes sure
 * the bucket's JetStream stream exists.
 */
export async function open(namespace: string, options: OpenOptions): Promise<Bucket> {
  checkName("namespace", namespace);
  const opts = resolveOptions(namespace, options);
  const db = openDatabase(opts.database as DatabaseInput, { poolSize: opts.poolSize, applicationName: `dmm:${namespace}` });
  let tokens: Tokens | null = null;
  try {
    if (opts.migrate) await applyMigrations(db.client);
    await checkSchemaVersion(db.client);
    if (opts.nats !== undefined && opts.nats !== null && opts.nats !== "") {
      tokens = await openTokens(opts.nats as NatsInput, namespace, {
        ackWaitMs: Math.max(opts.leaseMs, 5_000),
        duplicateWindowMs: 120_000,
      });
      await tokens.ensureStream();
    }
  } catch (err) {
    await tokens?.close().catch(() => {});
    await db.close().catch(() => {});
    throw openError(err, opts.database);
  }
  return new BucketImpl(opts, db, tokens);
}

/**
 * Applies dmm's migrations to a database (URL, postgres.js client or Drizzle database); safe
 * to run from many processes at once. Returns how many migrations were applied.
 */
export async function migrate(database: unknown): Promise<{ applied: number }> {
  if (database === undefined || database === null || database === "") {
    throw new ConfigError("migrate(database) needs a postgres:// URL, a postgres.js client or a Drizzle database.");
  }
  const db = openDatabase(database as DatabaseInput, { poolSize: 2, applicationName: "dmm:migrate" });
  try {
    return await applyMigrations(db.client);
  } finally {
    await db.close();
  }
}

class BucketImpl implements Bucket, BucketInternals {
  readonly registry = new Registry();
  readonly namespace: string;
  readonly dispatch: "nats" | "postgres";
  onRunEnd?: (event: RunEndEvent) => void;
  readonly #stop = new AbortController();
  readonly #sources = new Map<string, Set<WakeableSource>>();
  readonly #works = new Set<Promise<void>>();
  #engine: Engine | null = null;
  #engineStarting: Promise<Engine> | null = null;
  #relay: Relay | null = null;
  #unlisten: (() => Promise<void>) | null = null;
  #closing: Promise<void> | null = null;
  #fallback = false;
  #fallbackTimer: NodeJS.Timeout | null = null;
  #probe: NodeJS.Timeout | null = null;
  #relayFailures = 0;
  readonly #switching = new Set<SwitchingSource>();
  // Outbox rows offered to idle runners (see #onOutboxRows) whose takes have not settled yet,
  // and the timer of a relay wake-up held for them.
  #directTakes = 0;
  #relayWakeHeld: NodeJS.Timeout | null = null;

  constructor(
    readonly options: ResolvedOptions,
    readonly db: Database,
    readonly tokens: Tokens | null,
  ) {
    this.namespace = options.namespace;
    this.dispatch = tokens ? "nats" : "postgres";
    tokens?.onConnectivity((up) => {
      if (up) {
        if (this.#fallbackTimer) clearTimeout(this.#fallbackTimer);
        this.#fallbackTimer = null;
        // The server forgot our pull requests with the old connection: pull again now.
        for (const s of this.#switching) s.restartPulls();
        return;
      }
      this.#fallbackTimer ??= setTimeout(() => {
        this.#fallbackTimer = null;
        this.#setFallback(true, "NATS connection lost");
      }, options.natsFallbackMs);
      this.#fallbackTimer.unref();
    });
  }

  get natsFallback(): boolean {
    return this.#fallback;
  }

  /**
   * Switches this process between JetStream and Postgres dispatch. While on Postgres, a probe
   * asks JetStream every second and switches back as soon as it answers.
   */
  #setFallback(on: boolean, reason: string): void {
    if (on === this.#fallback || this.#stop.signal.aborted) return;
    this.#fallback = on;
    const log = this.options.logger;
    if (on) {
      log.warn("dispatch:fallback", { namespace: this.namespace, to: "postgres", reason });
      this.#probe = setInterval(() => {
        void this.tokens!.healthy(1_000).then((ok) => {
          if (ok) this.#setFallback(false, "NATS answers again");
        });
      }, 1_000);
      this.#probe.unref();
    } else {
      log.info("dispatch:restored", { namespace: this.namespace, to: "nats", reason });
      if (this.#probe) clearInterval(this.#probe);
      this.#probe = null;
      this.#relayFailures = 0;
      this.#relay?.wake();
    }
    for (const s of this.#switching) s.modeChanged();
  }

  register<M extends Materializer>(kind: string, cls: MaterializerClass<M>, options?: KindOptions): WorkStream<M> {
    this.#open();
    const entry = this.registry.add(kind, cls as MaterializerClass, options);
    return {
      kind,
      cls,
      work: (workOptions) => this.#work(entry, workOptions),
    };
  }

  async notify(instance: Materializer | Materializer[], options?: WriteOptions): Promise<void> {
    this.#open();
    const list = Array.isArray(instance) ? instance : [instance];
    const items = list.map((i) => this.#prepareNotify(i));
    await notifyMatters(this.#executor(options), this.namespace, items);
  }

  async touch(cls: MaterializerClass | string, identity: string, options?: WriteOptions): Promise<void> {
    this.#open();
    await touchMatters(this.#executor(options), this.namespace, [this.#prepareTouch(cls, identity)]);
  }

  async matter<M extends Materializer>(cls: MaterializerClass<M> | string, identity: string): Promise<MatterView<M> | undefined> {
    this.#open();
    const entry = this.#entry(cls);
    checkIdentity(entry.kind, identity);
    const row = await readMatter(this.db.db, this.namespace, entry.kind, identity);
    return row ? (toView(row) as MatterView<M>) : undefined;
  }

  async matters(options: { kind?: string; limit?: number } = {}): Promise<MatterView[]> {
    this.#open();
    if (options.kind !== undefined) checkName("kind", options.kind);
    return (await listMatters(this.db.db, this.namespace, options)).map(toView);
  }

  stats(): EngineStats {
    return { ...(this.#engine?.stats ?? { runs: 0, succeeded: 0, failed: 0, parked: 0, leaseLost: 0, swept: 0, reapedWorkers: 0 }) };
  }

  workerId(): string | null {
    return this.#engine?.workerId ?? null;
  }

  async relayNow(): Promise<number> {
    if (!this.tokens) return 0;
    let total = 0;
    for (;;) {
      const r = await this.#relayOnce();
      total += r.dispatched;
      if (!r.more) return total;
    }
  }

  sweepNow(): Promise<number> {
    return sweepMatters(this.db.db, this.namespace, 0, 10_000);
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#stop.abort(new ClosedError(`The bucket "${this.namespace}" is closed.`));
    if (this.#fallbackTimer) clearTimeout(this.#fallbackTimer);
    if (this.#probe) clearInterval(this.#probe);
    const engine = this.#engine ?? (await this.#engineStarting?.catch(() => null)) ?? null;
    await engine?.stop();
    await Promise.allSettled([...this.#works]);
    await this.#relay?.stop();
    if (this.#relayWakeHeld) clearTimeout(this.#relayWakeHeld);
    await this.#unlisten?.().catch(() => {});
    await this.tokens?.close().catch(() => {});
    await this.db.close();
  }

  #open(): void {
    if (this.#stop.signal.aborted) {
      throw new ClosedError(`The bucket "${this.namespace}" is closed; open() a new one to continue.`);
    }
  }

  #executor(options?: WriteOptions): DrizzleExecutor {
    const tx = options?.tx;
    if (tx === undefined) return this.db.db;
    if (!tx || typeof (tx as DrizzleExecutor).execute !== "function") {
      throw new ConfigError("The tx option must be a Drizzle transaction or database (something with execute()) on postgres.js.");
    }
    return tx;
  }

  #prepareNotify(instance: Materializer): NotifyItem {
    const entry = this.registry.instanceEntry(instance);
    const identity = checkIdentity(entry.kind, callIdentity(entry, instance));
    return { kind: entry.kind, identity, cache: encodeCache(entry.kind, identity, instance, this.options.maxCacheBytes) };
  }

  #entry(kind: MaterializerClass | string): KindEntry {
    return typeof kind === "string" ? this.registry.kind(kind) : this.registry.classEntry(kind);
  }

  #prepareTouch(cls: MaterializerClass | string, identity: string): TouchItem {
    const entry = this.#entry(cls);
    return { kind: entry.kind, identity: checkIdentity(entry.kind, identity) };
  }

  async #work(entry: KindEntry, workOptions: WorkOptions = {}): Promise<void> {
    this.#open();
    const concurrency = workOptions.concurrency ?? 16;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10_000) {
      throw new ConfigError(`work({ concurrency }) needs a whole number from 1 to 10000; got ${String(workOptions.concurrency)}.`);
    }
    const prefetch = workOptions.prefetch ?? "auto";
    if (prefetch !== "auto" && (!Number.isInteger(prefetch) || prefetch < 0 || prefetch > 100_000)) {
      throw new ConfigError(`work({ prefetch }) needs a whole number from 0 to 100000; got ${String(workOptions.prefetch)}.`);
    }
    const signal = workOptions.signal ? AbortSignal.any([workOptions.signal, this.#stop.signal]) : this.#stop.signal;
    // Postgres or NATS may be down right now: keep trying (with backoff) rather than fail the
    // stream for good; the bucket's fallback covers NATS, and work starts when Postgres answers.
    const engine = await this.#retry("worker:start", () => this.#startEngine(), signal);
    if (!engine) return;
    if (this.tokens) {
      // Normally the consumer is there before the first pull; while NATS is away, keep trying
      // in the background (the fallback dispatches meanwhile).
      await this.tokens.ensureConsumer(entry.kind).catch(() => this.#ensureConsumer(entry.kind, signal));
    }
    const source = this.#source(entry, engine);
    let set = this.#sources.get(entry.kind);
    if (!set) this.#sources.set(entry.kind, (set = new Set()));
    set.add(source);
    const log = this.options.logger.child({ namespace: this.namespace });
    const p = runKind(engine, entry, source, { concurrency, prefetch }, signal, log).finally(() => {
      set.delete(source);
      this.#works.delete(p);
    });
    this.#works.add(p);
    return p;
  }

  #source(entry: KindEntry, engine: Engine): WakeableSource {
    const { namespace, options } = this;
    const outbox = createOutboxSource({
      pollIntervalMs: options.pollIntervalMs,
      takeAndClaim: async (max) => takeAndClaim(this.db.db, namespace, await engine.owner(), options.leaseMs, entry.kind, max),
    });
    if (this.tokens) {
      const tokens = this.tokens;
      const fromTokens = createTokenSource({
        kind: entry.kind,
        log: options.logger,
        expiresMs: Math.max(1_000, options.pollIntervalMs * 5),
        fetch: (max, expiresMs, signal) =>
          tokens.fetch(entry.kind, max, expiresMs, (subject) => options.logger.warn("tokens:garbage", { subject }), signal),
        claim: async (keys) =>
          claimKeys(this.db.db, namespace, await engine.owner(), options.leaseMs, entry.kind, keys.map((k) => k.identity), keys.map((k) => k.origin)),
      });
      const switching = createSwitchingSource(entry.kind, fromTokens, outbox, () => this.#fallback);
      this.#switching.add(switching);
      const close = switching.close.bind(switching);
      switching.close = async () => {
        this.#switching.delete(switching);
        await close();
      };
      return switching;
    }
    return outbox;
  }

  async #relayOnce(): Promise<{ taken: number; dispatched: number; deferred: number; more: boolean; nextInMs: number | null }> {
    // While NATS is down the workers take outbox rows themselves; publishing would only fail.
    if (this.#fallback) return { taken: 0, dispatched: 0, deferred: 0, more: false, nextInMs: null };
    const tokens = this.tokens!;
    let failed = false;
    const result = await relayOutbox(this.db.db, this.namespace, this.options.relayBatchSize, async (batch) => {
      const round = relayMessages(this.namespace, batch);
      const { results, errors } = await tokens.publish(round.messages);
      if (errors.length > 0) {
        failed = errors.length === round.messages.length;
        this.options.logger.warn("relay:publish:error", { failed: errors.length, err: String((errors[0] as Error)?.message ?? errors[0]) });
      }
      return round.perRow(results);
    });
    this.#relayFailures = failed ? this.#relayFailures + 1 : 0;
    if (this.#relayFailures >= 3) this.#setFallback(true, "JetStream refuses publishes");
    return result;
  }

  /** Runs `fn` until it succeeds or `signal` aborts (then resolves undefined), logging failures. */
  async #retry<T>(what: string, fn: () => Promise<T>, signal: AbortSignal): Promise<T | undefined> {
    for (let failures = 0; !signal.aborted; failures++) {
      try {
        return await fn();
      } catch (err) {
        const delay = Math.min(5_000, 100 * 2 ** Math.min(failures, 6));
        if (failures === 0 || failures % 10 === 0) {
          this.options.logger.warn(`${what}:error`, { namespace: this.namespace, retryInMs: delay, err: (err as Error)?.message ?? String(err) });
        }
        await untilAborted(sleep(delay), signal);
      }
    }
    return undefined;
  }

  /** Makes sure the kind's consumer exists, retrying in the background while NATS is away. */
  #ensureConsumer(kind: string, signal: AbortSignal): void {
    void this.#retry("tokens:consumer", () => this.tokens!.ensureConsumer(kind), signal);
  }

  #startEngine(): Promise<Engine> {
    if (this.#engine) return Promise.resolve(this.#engine);
    this.#engineStarting ??= (async () => {
      const { namespace, options } = this;
      const log = options.logger.child({ namespace });
      const db = this.db.db;
      const context: ContextDeps = {
        prepareNotify: (instance) => this.#prepareNotify(instance),
        prepareTouch: (cls, identity) => this.#prepareTouch(cls, identity),
        readMatter: (cls, identity) => this.matter(cls, identity),
        fencedTransaction: (lease, fn) =>
          guardedTransaction(db, async (tx) => {
            if (!(await holdLease(tx, namespace, lease))) {
              throw new LeaseLostError(
                `ctx.transaction refused: this run of ${lease.kind} ${JSON.stringify(lease.identity)} no longer holds its lease, so its writes must not commit.`,
              );
            }
            return fn(tx);
          }),
      };
      const engine = new Engine({
        log,
        workerId: randomUUID(),
        leaseMs: options.leaseMs,
        heartbeatMs: options.heartbeatMs,
        sweepIntervalMs: options.sweepIntervalMs,
        deadWorkerCheckMs: options.deadWorkerCheckMs,
        shutdownGraceMs: options.shutdownGraceMs,
        openSession: () => registerWorker(this.db.client, namespace, randomUUID()),
        // The database itself, so that the finish goes out as a prepared statement.
        finish: (items) => finishRuns(db, namespace, items, (fn) => guardedTransaction(db, fn)),
        enqueue: (keys) => enqueueMatters(db, namespace, keys),
        sweep: () => sweepMatters(db, namespace, options.sweepIntervalMs, 1_000),
        maintain: () => vacuumIfBloated(db),
        reap: () => reapDeadWorkers(db, namespace),
        encodeCache: (kind, identity, instance) => encodeCache(kind, identity, instance, options.maxCacheBytes),
        context,
        onRunEnd: (event) => this.onRunEnd?.(event),
        onRecovered: (matters) => {
          for (const m of matters) for (const source of this.#sources.get(m.kind) ?? []) source.inject([m]);
        },
      });
      await engine.start();
      const listeners: { unlisten(): Promise<void> }[] = [];
      this.#unlisten = async () => {
        await Promise.all(listeners.splice(0).map((l) => l.unlisten()));
      };
      try {
        listeners.push(await this.db.client.listen("dmm_outbox", (payload) => this.#onOutbox(payload)));
        if (this.tokens) listeners.push(await this.db.client.listen("dmm_outbox_rows", (payload) => this.#onOutboxRows(payload)));
      } catch (err) {
        await this.#unlisten().catch(() => {});
        await engine.stop();
        throw err;
      }
      if (this.tokens) {
        this.#relay = startRelay({
          log,
          batchSize: options.relayBatchSize,
          pollIntervalMs: options.pollIntervalMs,
          relayOnce: () => this.#relayOnce(),
        });
      }
      this.#engine = engine;
      return engine;
    })();
    // A failed start (Postgres down) is tried afresh by the next caller.
    this.#engineStarting.catch(() => (this.#engineStarting = null));
    return this.#engineStarting;
  }

  /**
   * A head start for the tokens of a notify's few new outbox rows (migration 0018 sends them on
   * dmm_outbox_rows): published at once, each with the msgID the relay's next round gives the
   * same row, so JetStream drops that round's publish as a duplicate and the round deletes the
   * row as usual. Rows of a kind whose runner here is idle are offered to that runner instead
   * (SwitchingSource.offer), which takes them from the outbox itself: no token at all. Best
   * effort: a payload of another namespace or shape is ignored, and a refused or failed publish,
   * or a take that finds the rows gone, leaves them to the relay round.
   */
  #onOutboxRows(payload: string): void {
    const tokens = this.tokens;
    if (!tokens || !this.#relay || this.#fallback || this.#stop.signal.aborted) return;
    let list: unknown;
    try {
      list = JSON.parse(payload);
    } catch {
      return;
    }
    if (!Array.isArray(list)) return;
    const rows: { id: number; kind: string; identity: string; bumps: number; born: string }[] = [];
    for (const r of list) {
      if (!Array.isArray(r) || r[0] !== this.namespace) continue;
      const [, kind, identity, id, bumps, born] = r as unknown[];
      if (typeof kind !== "string" || typeof identity !== "string" || typeof id !== "number" || typeof bumps !== "number" || typeof born !== "string") continue;
      rows.push({ id, kind, identity, bumps, born });
    }
    if (rows.length === 0) return;
    // An idle runner of the kind takes its rows itself; the rest get their tokens at once.
    const perKind = new Map<string, number>();
    for (const r of rows) perKind.set(r.kind, (perKind.get(r.kind) ?? 0) + 1);
    const offered = new Set<string>();
    for (const [kind, count] of perKind) {
      for (const source of this.#switching) {
        if (source.kind !== kind) continue;
        this.#directTakes++;
        if (source.offer(count, () => this.#directTakeSettled())) {
          offered.add(kind);
          break;
        }
        this.#directTakes--;
      }
    }
    const publish = offered.size === 0 ? rows : rows.filter((r) => !offered.has(r.kind));
    if (publish.length === 0) return;
    void tokens.publish(relayMessages(this.namespace, publish).messages).then(
      ({ errors }) => {
        if (errors.length > 0) this.options.logger.debug("relay:early:refused", { failed: errors.length });
      },
      () => {},
    );
  }

  /**
   * One offered take settled. The relay's wake-up for the same commit (dmm_outbox normally
   * arrives right after dmm_outbox_rows) waited for it: a round started at once would mostly
   * take the very rows the runner is about to claim, mark them in flight and publish their tokens
   * after all. (A transaction of several notify statements may deliver its one dmm_outbox first,
   * Postgres folding the repeats: then the round and the take race, which costs a round.)
   */
  #directTakeSettled(): void {
    if (--this.#directTakes > 0) return;
    this.#releaseRelayWake();
  }

  #releaseRelayWake(): void {
    if (!this.#relayWakeHeld) return;
    clearTimeout(this.#relayWakeHeld);
    this.#relayWakeHeld = null;
    this.#relay?.wake();
  }

  #onOutbox(payload: string): void {
    const colon = payload.indexOf(":");
    if (payload.slice(0, colon) !== this.namespace) return;
    if (this.#relay && !this.#fallback) {
      // Held at most RELAY_WAKE_HOLD_MS, whatever becomes of the takes.
      if (this.#directTakes > 0) this.#relayWakeHeld ??= setTimeout(() => this.#releaseRelayWake(), RELAY_WAKE_HOLD_MS);
      else this.#relay.wake();
      return;
    }
    for (const source of this.#sources.get(payload.slice(colon + 1)) ?? []) source.wake();
  }
}

/**
 * What `open()` throws when it fails: dmm's own errors as they are, Postgres's SQL errors as
 * they are, and everything else (refused or dropped connections, TLS failures) as a
 * `ConnectionError` naming the database without its password.
 */
function openError(err: unknown, database: unknown): unknown {
  if (err instanceof DmmError) return err;
  if (err && typeof err === "object" && "severity" in err) return err;
  const where = typeof database === "string" ? redact(database) : "the given client";
  return new ConnectionError(`Could not open the database at ${where}: ${(err as Error)?.message ?? String(err)}. Check that Postgres is running and the URL (and its TLS settings) are right.`, { cause: err });
}

function callIdentity(entry: KindEntry, instance: Materializer): string {
  if (typeof instance.identity !== "function") {
    throw new ConfigError(`The ${entry.kind} instance has no identity() method.`);
  }
  return instance.identity();
}

function toView(row: MatterRow): MatterView {
  return {
    kind: row.kind,
    identity: row.identity,
    cache: row.cache,
    generation: row.generation,
    observedGeneration: row.observedGeneration,
    attempts: row.attempts,
    lastError: row.lastError,
    dueAt: row.dueAt,
    dueReason: row.dueReason,
    parked: row.parked && row.state === "parked",
    state: row.state,
    leaseOwner: row.leaseOwner,
    leaseEpoch: row.leaseEpoch,
    leaseUntil: row.leaseUntil,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  };
}
