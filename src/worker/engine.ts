/**
 * The worker side of a bucket: per-kind runners that claim, run and finish matters, plus the
 * machinery they share (the worker session with its advisory lock and heartbeats, a batching
 * finisher, the sweep, the dead-worker check and the due-time timers). All I/O is injected.
 */
import { coerceError, ClosedError, LeaseLostError, RetryAfterError, RunTimeoutError, TerminalError } from "../errors.js";
import type { Logger, Materializer, MaterializerClass } from "../types.js";
import type { ClaimedMatter } from "../store/claim.js";
import type { FinishItem, FinishResult } from "../store/finish.js";
import type { TouchItem } from "../store/notify.js";
import type { LeaseKey, WorkerSession } from "../store/workers.js";
import type { KindEntry } from "../registry.js";
import { backoffDelay, resyncDelay } from "./backoff.js";
import { RunContext, type ContextDeps } from "./context.js";
import { RunAbort, sleep, untilAborted } from "../async.js";
import { storableText } from "../codec.js";

/** A claimed matter, with the token that led to it (NATS dispatch) to settle after the finish. */
export interface Claimed {
  matter: ClaimedMatter;
  token?: { ack(): void; nak(ms: number): void; working(): void };
}

/**
 * Where a runner gets work. `take` claims up to `max` matters now (maybe none); `ready`
 * resolves when `take` may find more (a wake-up, a token, a poll tick) or `signal` aborts.
 */
export interface Source {
  take(max: number): Promise<Claimed[]>;
  /**
   * True when the last `take` found nothing more to take now: the runner waits for `ready`
   * before taking again instead of asking once more (which would also delay its reaction to
   * the next wake-up by a round trip).
   */
  readonly drained?: boolean;
  ready(signal: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

/** Everything the engine needs from the outside. */
export interface EngineDeps {
  log: Logger;
  workerId: string;
  leaseMs: number;
  heartbeatMs: number;
  sweepIntervalMs: number;
  deadWorkerCheckMs: number;
  shutdownGraceMs: number;
  openSession(): Promise<WorkerSession>;
  finish(items: FinishItem[]): Promise<FinishResult[]>;
  enqueue(keys: TouchItem[]): Promise<void>;
  sweep(): Promise<number>;
  /** Vacuums dmm's tables when autovacuum falls behind; returns the tables it vacuumed. */
  maintain?(): Promise<string[]>;
  reap(): Promise<{ workers: string[]; matters: TouchItem[] }>;
  /** Hands matters reclaimed from dead workers to the runners, to claim without a token. */
  onRecovered?: (matters: TouchItem[]) => void;
  encodeCache(kind: string, identity: string, instance: object): string;
  context: ContextDeps;
  /** Called after each run settles; tests and benchmarks observe runs through it. */
  onRunEnd?: (event: RunEndEvent) => void;
}

/** What `onRunEnd` reports. */
export interface RunEndEvent {
  kind: string;
  identity: string;
  outcome: "ok" | "fail" | "park" | "release" | "lost";
  reason: string;
  attempt: number;
  durationMs: number;
  error?: Error;
}

interface Lease extends LeaseKey {
  abort: RunAbort;
  token?: Claimed["token"];
}

interface PendingFinish {
  item: FinishItem;
  lease: Lease;
  done: () => void;
}

/** Counters for status pages and tests. */
export interface EngineStats {
  runs: number;
  succeeded: number;
  failed: number;
  parked: number;
  leaseLost: number;
  swept: number;
  reapedWorkers: number;
}

/** The per-bucket worker machinery. One per bucket, created by the first `work()`. */
export class Engine {
  readonly stats: EngineStats = { runs: 0, succeeded: 0, failed: 0, parked: 0, leaseLost: 0, swept: 0, reapedWorkers: 0 };
  readonly #deps: EngineDeps;
  readonly #leases = new Leases();
  readonly #finishQueue: PendingFinish[] = [];
  readonly #timers = new Set<NodeJS.Timeout>();
  /** Runs and releases whose finish is not written yet; `#whenIdle` waits for none. */
  #active = 0;
  #idleWaiters: (() => void)[] = [];
  #flushing: Promise<void> | null = null;
  #session: WorkerSession | null = null;
  #sessionOpening: Promise<WorkerSession> | null = null;
  #loops: NodeJS.Timeout[] = [];
  #stopping = false;
  #heartbeatBusy = false;
  #maintenanceRefused = false;

  constructor(deps: EngineDeps) {
    this.#deps = deps;
  }

  /** Registers the worker (advisory lock) and starts heartbeats, sweep and dead-worker checks. */
  async start(): Promise<void> {
    await this.#ensureSession();
    const every = (ms: number, fn: () => Promise<void>) => {
      let busy = false;
      const t = setInterval(() => {
        if (busy || this.#stopping) return;
        busy = true;
        fn().finally(() => (busy = false));
      }, ms);
      t.unref();
      this.#loops.push(t);
    };
    every(this.#deps.heartbeatMs, () => this.#heartbeat());
    every(this.#deps.sweepIntervalMs, () => this.#sweep());
    every(this.#deps.deadWorkerCheckMs, () => this.#reap());
    // A worker that starts after others died picks up their leftovers at once, not one
    // interval later. The sweep waits for its first interval: it reads every matter of the
    // namespace (300 ms of Postgres CPU at a million matters), and a fresh worker has a backlog
    // to drain first; what it would find (a lost token, an expired lease) waits at most one
    // sweep interval, as it does anyway. So does maintenance: right after a bulk load it would
    // analyze tables the claim functions need no statistics for (migration 0003).
    void this.#reap();
  }

  /** The current worker id (changes if the session had to be re-opened). */
  get workerId(): string {
    return this.#session?.id ?? this.#deps.workerId;
  }

  /** Number of runs in flight. */
  get inFlight(): number {
    return this.#active;
  }

  async #ensureSession(): Promise<WorkerSession> {
    if (this.#session) return this.#session;
    if (!this.#sessionOpening) {
      this.#sessionOpening = this.#deps.openSession().then(
        (s) => {
          this.#session = s;
          this.#sessionOpening = null;
          this.#deps.log.info("worker:start", { workerId: s.id });
          return s;
        },
        (err) => {
          this.#sessionOpening = null;
          throw err;
        },
      );
    }
    return this.#sessionOpening;
  }

  /** Owner id to stamp on claims; opens a session first if the last one died. */
  async owner(): Promise<string> {
    return (await this.#ensureSession()).id;
  }

  async #heartbeat(): Promise<void> {
    if (this.#heartbeatBusy) return;
    this.#heartbeatBusy = true;
    const session = this.#session;
    try {
      if (!session) {
        await this.#ensureSession();
        return;
      }
      const leases = [...this.#leases.values()];
      for (const l of leases) l.token?.working();
      // A heartbeat that cannot answer before our leases could expire (a half-open connection,
      // a stalled server) counts as a lost session: better to abort runs than to let them go on
      // after another worker may have taken their matters over.
      const deadlineMs = Math.max(this.#deps.heartbeatMs, this.#deps.leaseMs - this.#deps.heartbeatMs);
      let timer: NodeJS.Timeout | undefined;
      const lost = await Promise.race([
        session.heartbeat(
          leases.map((l) => ({ kind: l.kind, identity: l.identity, epoch: l.epoch })),
          this.#deps.leaseMs,
        ),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`heartbeat got no answer within ${deadlineMs} ms`)), deadlineMs);
        }),
      ]).finally(() => clearTimeout(timer));
      for (const key of lost) {
        const lease = this.#leases.get(key.kind, key.identity);
        if (lease && lease.epoch === key.epoch) {
          lease.abort.abort(new LeaseLostError(`The lease on ${key.kind} ${JSON.stringify(key.identity)} was lost (expired or taken over); the run is aborted.`));
        }
      }
    } catch (err) {
      // The session (and with it the advisory lock) is gone: other workers may already treat
      // our leases as dead. Abort every run, and open a fresh session for the next claims.
      if (this.#session === session && session) {
        this.#session = null;
        this.#deps.log.warn("worker:session:lost", { workerId: session.id, err: coerceError(err).message });
        for (const lease of this.#leases.values()) {
          lease.abort.abort(new LeaseLostError("The worker lost its Postgres session; its leases may be reclaimed, so the run is aborted."));
        }
        session.close().catch(() => {});
      }
    } finally {
      this.#heartbeatBusy = false;
    }
  }

  async #sweep(): Promise<void> {
    try {
      const n = await this.#deps.sweep();
      if (n > 0) {
        this.stats.swept += n;
        this.#deps.log.info("sweep:dispatch", { matters: n });
      }
    } catch (err) {
      this.#deps.log.warn("sweep:error", { err: coerceError(err).message });
    }
    if (!this.#deps.maintain || this.#maintenanceRefused) return;
    try {
      const vacuumed = await this.#deps.maintain();
      if (vacuumed.length > 0) this.#deps.log.info("sweep:vacuum", { tables: vacuumed });
    } catch (err) {
      // Most likely not the tables' owner: say so once, and leave it to autovacuum.
      this.#maintenanceRefused = true;
      this.#deps.log.warn("sweep:vacuum:refused", { err: coerceError(err).message });
    }
  }

  async #reap(): Promise<void> {
    try {
      const r = await this.#deps.reap();
      if (r.workers.length > 0) {
        this.stats.reapedWorkers += r.workers.length;
        this.#deps.log.info("sweep:dead-workers", { workers: r.workers, matters: r.matters.length });
        if (r.matters.length > 0) this.#deps.onRecovered?.(r.matters);
      }
    } catch (err) {
      this.#deps.log.warn("sweep:error", { err: coerceError(err).message });
    }
  }

  /**
   * Runs one claimed matter to its finish. `onSettled` fires as soon as the user code settled
   * (or was abandoned after an abort), so the runner can claim more while the finish is written
   * in a batch; the returned promise resolves after the finish.
   */
  run(entry: KindEntry, claimed: Claimed, onSettled: () => void): Promise<void> {
    const lease = this.#lease(claimed);
    this.#active++;
    return this.#track(entry, claimed, lease, onSettled);
  }

  /** Runs `#execute`, turning a bug in dmm into a log line, and counts the run out at its end. */
  async #track(entry: KindEntry, claimed: Claimed, lease: Lease, onSettled: () => void): Promise<void> {
    let settled = false;
    const settle = () => {
      if (!settled) {
        settled = true;
        onSettled();
      }
    };
    try {
      await this.#execute(entry, claimed, lease, settle);
    } catch (err) {
      // Only a bug in dmm gets here; the lease expires and the sweep re-dispatches the matter.
      settle();
      this.#deps.log.error("worker:internal-error", { kind: claimed.matter.kind, key: claimed.matter.identity, err: String(coerceError(err).message) });
    } finally {
      this.#ended();
    }
  }

  /** One run or release fewer in flight; wakes `#whenIdle` waiters at none. */
  #ended(): void {
    if (--this.#active > 0) return;
    for (const wake of this.#idleWaiters.splice(0)) wake();
  }

  /** Resolves once no run or release is in flight. */
  #whenIdle(): Promise<void> {
    return this.#active === 0 ? Promise.resolve() : new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async #execute(entry: KindEntry, claimed: Claimed, lease: Lease, onSettled: () => void): Promise<void> {
    const { matter } = claimed;
    const started = performance.now();
    const attempt = matter.attempts + 1;
    // Per-run lines carry their fields inline, each spelled out: a child logger per run, or one
    // shared fields object spread with more after it, would cost more than a trivial run (debug
    // lines are built whether or not printed; the context makes a child only when the run reads
    // ctx.log).
    const log = this.#deps.log;
    const timer = setTimeout(
      () => lease.abort.abort(new RunTimeoutError(`The run of ${matter.kind} ${JSON.stringify(matter.identity)} exceeded its timeout of ${entry.timeoutMs} ms.`)),
      entry.timeoutMs,
    );
    const ctx = new RunContext(matter.kind, matter.identity, matter.reason, attempt, matter.generation, lease.abort, log, matter.owner, matter.epoch, this.#deps.context);
    let outcome: FinishItem["outcome"] = "ok";
    let error: Error | undefined;
    let cacheText: string | null = null;
    this.stats.runs++;
    log.debug("materialize:start", { kind: matter.kind, key: matter.identity, attempt, reason: matter.reason, generation: matter.generation });
    try {
      const instance = new (entry.cls as MaterializerClass)() as Materializer & Record<string, unknown>;
      installFields(instance, matter.cache);
      const before = instance.identity();
      // A prefetched matter whose lease was lost while it waited is not run at all.
      if (lease.abort.aborted) throw lease.abort.reason;
      let running: unknown;
      try {
        running = instance.materialize(ctx);
      } catch (thrown) {
        running = Promise.reject(thrown);
      }
      await raceAbort(Promise.resolve(running), lease.abort);
      const after = instance.identity();
      // A touched-only matter starts from `{}` (identity field empty); setting it to the real
      // identity is fine, anything else would file the cache under another key.
      if (after !== before && after !== matter.identity) {
        throw new TerminalError(
          `materialize() changed the identity of ${matter.kind} ${JSON.stringify(matter.identity)} to ${JSON.stringify(after)}; identity fields must not change. Notify a new instance for a new identity instead.`,
        );
      }
      // Unchanged: the finish need not send it. Flat fields are compared one by one; otherwise
      // the texts (same fields in the order Postgres returned them).
      if (!sameFlatFields(instance, matter.cache)) {
        cacheText = this.#deps.encodeCache(matter.kind, matter.identity, instance);
        if (cacheText === JSON.stringify(matter.cache)) cacheText = null;
      }
    } catch (thrown) {
      error = coerceError(thrown);
      if (lease.abort.aborted && lease.abort.reason instanceof ClosedError) outcome = "release";
      else outcome = error instanceof TerminalError ? "park" : "fail";
    } finally {
      clearTimeout(timer);
      onSettled();
    }
    const durationMs = performance.now() - started;
    const item: FinishItem = {
      owner: matter.owner,
      kind: matter.kind,
      identity: matter.identity,
      epoch: matter.epoch,
      generation: matter.generation,
      outcome,
      base: matter.cache,
      cache: cacheText,
      error: error ? formatError(error) : null,
      dueInMs: null,
      dueReason: null,
    };
    if (outcome === "ok") {
      item.notifies = ctx.notifies;
      item.touches = ctx.touches;
      const resync = entry.resyncPeriodMs > 0 ? resyncDelay(entry.resyncPeriodMs) : null;
      if (ctx.requeueMs !== null && (resync === null || ctx.requeueMs <= resync)) {
        item.dueInMs = ctx.requeueMs;
        item.dueReason = "requeue";
      } else if (resync !== null) {
        item.dueInMs = resync;
        item.dueReason = "resync";
      }
    } else if (outcome === "fail") {
      item.dueInMs =
        error instanceof RetryAfterError
          ? error.retryAfterMs
          : backoffDelay(attempt, { baseMs: entry.backoffBaseMs, maxMs: entry.backoffMaxMs });
      item.dueReason = "retry";
    }
    const saved = await this.#finish(item, lease);
    const reported = saved ? outcome : "lost";
    if (reported === "ok") {
      this.stats.succeeded++;
      log.debug("materialize:success", { kind: matter.kind, key: matter.identity, attempt, durationMs: round(durationMs) });
    } else if (reported === "fail") {
      this.stats.failed++;
      log.warn("materialize:error", { kind: matter.kind, key: matter.identity, attempt, durationMs: round(durationMs), retryInMs: item.dueInMs, err: short(error) });
    } else if (reported === "park") {
      this.stats.parked++;
      log.warn("materialize:parked", { kind: matter.kind, key: matter.identity, attempt, err: short(error) });
    } else if (reported === "lost") {
      this.stats.leaseLost++;
      log.warn("materialize:lease-lost", { kind: matter.kind, key: matter.identity, attempt, durationMs: round(durationMs), outcome });
    }
    try {
      this.#deps.onRunEnd?.({ kind: matter.kind, identity: matter.identity, outcome: reported, reason: matter.reason, attempt, durationMs, error });
    } catch (err) {
      log.warn("listener:error", { kind: matter.kind, key: matter.identity, attempt, err: coerceError(err).message });
    }
  }

  /**
   * Starts heartbeating the leases of freshly claimed matters (and extending their tokens' ack
   * waits), also while they wait in a runner's buffer.
   */
  hold(claimed: Claimed[]): void {
    for (const c of claimed) this.#lease(c);
  }

  /** The lease record of a claimed matter, created on first sight. */
  #lease(claimed: Claimed): Lease {
    const { matter } = claimed;
    const known = this.#leases.get(matter.kind, matter.identity);
    if (known && known.epoch === matter.epoch) return known;
    const lease: Lease = { kind: matter.kind, identity: matter.identity, epoch: matter.epoch, abort: new RunAbort(), token: claimed.token };
    this.#leases.set(lease);
    return lease;
  }

  /**
   * Gives back claimed matters that were never run (a stopping runner's buffer): their leases
   * are cleared without counting an attempt, and they go back on the outbox for another worker.
   */
  release(claimed: Claimed[]): void {
    for (const c of claimed) {
      const { matter } = c;
      const lease = this.#lease(c);
      this.#active++;
      void this.#finish(
        {
          owner: matter.owner,
          kind: matter.kind,
          identity: matter.identity,
          epoch: matter.epoch,
          generation: matter.generation,
          outcome: "release",
          base: matter.cache,
          cache: null,
          error: null,
          dueInMs: null,
          dueReason: null,
        },
        lease,
      ).then(() => this.#ended());
    }
  }

  /** Queues a finish; batches everything that arrives while one is being written. */
  #finish(item: FinishItem, lease: Lease): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      this.#finishQueue.push({
        item,
        lease,
        done: () => resolve((lease as Lease & { saved?: boolean }).saved === true),
      });
      if (!this.#flushing) this.#flushing = this.#flush();
    });
  }

  async #flush(): Promise<void> {
    try {
      while (this.#finishQueue.length > 0) {
        const batch = this.#finishQueue.splice(0, 1000);
        let results: FinishResult[];
        try {
          results = await this.#deps.finish(batch.map((b) => b.item));
        } catch (err) {
          this.#deps.log.error("finish:error", { runs: batch.length, err: coerceError(err).message });
          // Nothing was written; the leases expire and the sweep re-dispatches these matters.
          results = batch.map(() => ({ saved: false, dirty: false }));
          for (const b of batch) b.lease.token?.nak(this.#deps.leaseMs);
          this.#settle(batch, results, false);
          continue;
        }
        this.#settle(batch, results, true);
      }
    } finally {
      this.#flushing = null;
    }
  }

  #settle(batch: PendingFinish[], results: FinishResult[], settleTokens: boolean): void {
    batch.forEach((b, i) => {
      const r = results[i]!;
      this.#leases.delete(b.lease);
      (b.lease as Lease & { saved?: boolean }).saved = r.saved;
      if (settleTokens && b.lease.token) {
        if (b.item.outcome === "release") b.lease.token.nak(0);
        else b.lease.token.ack();
      }
      if (r.saved && b.item.dueInMs !== null && b.item.dueInMs <= this.#deps.sweepIntervalMs) {
        this.#scheduleEnqueue({ kind: b.item.kind, identity: b.item.identity }, b.item.dueInMs);
      }
      b.done();
    });
  }

  #scheduleEnqueue(key: TouchItem, ms: number): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      this.#deps.enqueue([key]).catch((err) => this.#deps.log.warn("schedule:error", { err: coerceError(err).message }));
    }, ms + 2);
    t.unref();
    this.#timers.add(t);
  }

  /**
   * Stops: waits up to `shutdownGraceMs` for runs in flight, aborts the rest (their leases are
   * released without counting an attempt), writes the last finishes and closes the session.
   */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    for (const t of this.#loops) clearInterval(t);
    const grace = new Promise<void>((r) => setTimeout(r, this.#deps.shutdownGraceMs).unref());
    await Promise.race([this.#whenIdle(), grace]);
    if (this.#active > 0) {
      this.#deps.log.warn("worker:stop:abort", { runs: this.#active });
      for (const lease of this.#leases.values()) lease.abort.abort(new ClosedError("The bucket is closing; the run is aborted and its lease released."));
      await this.#whenIdle();
    }
    while (this.#flushing) await this.#flushing;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    const session = this.#session ?? (await this.#sessionOpening?.catch(() => null)) ?? null;
    this.#session = null;
    await session?.close();
    this.#deps.log.info("worker:stop", { workerId: session?.id ?? this.#deps.workerId, runs: this.stats.runs });
  }
}

/**
 * Runs one kind: keeps up to `concurrency` runs going, and up to `prefetch` more matters
 * claimed ahead in a local buffer, so that under load one claim statement serves a whole batch
 * while the previous batch runs (the claims and the batched finishes overlap). Buffered matters
 * hold leases (kept alive by the heartbeat); on stop they are released unrun, without counting
 * an attempt. Resolves when `signal` aborts and every run it started has settled.
 */
export async function runKind(
  engine: Engine,
  entry: KindEntry,
  source: Source,
  limits: { concurrency: number; prefetch: number | "auto" },
  signal: AbortSignal,
  log: Logger,
): Promise<void> {
  const { concurrency } = limits;
  // Auto prefetch follows the runs' duration: fast runs (the batch is what costs) get a deep
  // buffer, slow runs a shallow one (a deep buffer would only hold leases other workers could
  // use). An average over the last few dozen runs, starting at the shallow end. The deep end is
  // 512, graphile-worker's fastest documented local queue (500): against 256, takes and finishes
  // of twice the size cut dmm-pg's Postgres CPU per trivial run from 42 to 35-37.5 us and the
  // worker's from 34-37 to 31-32 (cost benchmark, 2-core AMD EPYC); 1,000 gained little more.
  let avgRunMs = 100;
  const prefetch = () =>
    limits.prefetch !== "auto" ? limits.prefetch : avgRunMs < 10 ? Math.min(1_000, Math.max(512, 4 * concurrency)) : avgRunMs < 100 ? 4 * concurrency : concurrency;
  const capacityNow = () => concurrency + prefetch();
  const buffer: Claimed[] = [];
  let running = 0;
  let kick: (() => void) | null = null;
  const wakeUp = () => {
    const k = kick;
    kick = null;
    k?.();
  };
  const nextKick = () => new Promise<void>((r) => (kick = r));
  const startRuns = () => {
    while (running < concurrency && buffer.length > 0 && !signal.aborted) {
      running++;
      const started = performance.now();
      void engine.run(entry, buffer.shift()!, () => {
        avgRunMs += (performance.now() - started - avgRunMs) / 32;
        running--;
        startRuns();
        wakeUp();
      });
    }
  };
  let failures = 0;
  try {
    while (!signal.aborted) {
      const capacity = capacityNow();
      const room = capacity - running - buffer.length;
      // Refill once a quarter of the capacity is free (or at once when nothing is queued).
      if (room < Math.max(1, Math.floor(capacity / 4)) && buffer.length > 0) {
        await untilAborted(nextKick(), signal);
        continue;
      }
      if (room <= 0) {
        await untilAborted(nextKick(), signal);
        continue;
      }
      let claimed: Claimed[];
      try {
        claimed = await source.take(room);
        failures = 0;
      } catch (err) {
        failures++;
        const delay = Math.min(5_000, 50 * 2 ** Math.min(failures, 7));
        if (failures === 1 || failures % 20 === 0) log.warn("claim:error", { kind: entry.kind, retryInMs: delay, err: coerceError(err).message });
        await untilAborted(sleep(delay), signal);
        continue;
      }
      if (signal.aborted) {
        engine.hold(claimed);
        buffer.push(...claimed);
        break;
      }
      if (claimed.length === 0) {
        await untilAborted(source.ready(signal), signal);
        continue;
      }
      engine.hold(claimed);
      buffer.push(...claimed);
      startRuns();
      if (source.drained) await untilAborted(source.ready(signal), signal);
    }
  } finally {
    await source.close();
    engine.release(buffer.splice(0));
    while (running > 0) await nextKick();
  }
}

/**
 * Leases by kind, then identity. Looked up by the identity strings the claims came with, whose
 * hashes V8 keeps with them: a key concatenated from kind and identity was a new string to hash
 * on every look-up, a quarter of the engine's CPU per trivial run.
 */
class Leases {
  readonly #byKind = new Map<string, Map<string, Lease>>();

  get(kind: string, identity: string): Lease | undefined {
    return this.#byKind.get(kind)?.get(identity);
  }

  set(lease: Lease): void {
    let byIdentity = this.#byKind.get(lease.kind);
    if (!byIdentity) this.#byKind.set(lease.kind, (byIdentity = new Map()));
    byIdentity.set(lease.identity, lease);
  }

  /** Forgets `lease` unless a newer lease of the same matter replaced it meanwhile. */
  delete(lease: Lease): void {
    const byIdentity = this.#byKind.get(lease.kind);
    if (byIdentity?.get(lease.identity) === lease) byIdentity.delete(lease.identity);
  }

  *values(): IterableIterator<Lease> {
    for (const byIdentity of this.#byKind.values()) yield* byIdentity.values();
  }
}

/** The descriptor `installFields` defines each field with (reused: one object fewer per field). */
const FIELD: PropertyDescriptor = { value: undefined, writable: true, enumerable: true, configurable: true };

/**
 * Puts the cached fields on a fresh instance: defined, not assigned, so that no class setter
 * runs and no field replaces the prototype.
 */
function installFields(instance: object, cache: Record<string, unknown>): void {
  try {
    for (const key in cache) {
      if (!Object.hasOwn(cache, key)) continue;
      FIELD.value = cache[key];
      Object.defineProperty(instance, key, FIELD);
    }
  } finally {
    FIELD.value = undefined;
  }
}

/**
 * True when the instance's cache would be the stored one, known without serializing either:
 * every own enumerable field of the instance holds a string, number, boolean or null equal to
 * the stored field of the same name, and the stored cache has no other field (fields holding
 * `undefined` are left out, as JSON leaves them out). False for anything else, nested values
 * included, which the serialized texts then decide.
 */
export function sameFlatFields(instance: object, cache: Record<string, unknown>): boolean {
  let fields = 0;
  for (const key in instance) {
    if (!Object.hasOwn(instance, key)) return false;
    const value = (instance as Record<string, unknown>)[key];
    if (value === undefined) {
      if (Object.hasOwn(cache, key)) return false;
      continue;
    }
    if (typeof value === "object" && value !== null) return false;
    if (!Object.hasOwn(cache, key) || cache[key] !== value) return false;
    fields++;
  }
  for (const key in cache) if (Object.hasOwn(cache, key)) fields--;
  return fields === 0;
}

function raceAbort<T>(p: Promise<T>, abort: RunAbort): Promise<T> {
  // An abandoned run may still reject later: that must never be an unhandled rejection.
  p.catch(() => {});
  if (abort.aborted) return Promise.reject(abort.reason);
  return new Promise<T>((resolve, reject) => {
    abort.onAbort(reject);
    p.then(
      (v) => {
        abort.onAbort(undefined);
        resolve(v);
      },
      (e) => {
        abort.onAbort(undefined);
        reject(e);
      },
    );
  });
}

/** The error text stored as `last_error`: the stack where it names the message, made storable. */
function formatError(err: Error): string {
  try {
    const message = String(err.message);
    const stack = err.stack === undefined ? undefined : String(err.stack);
    return storableText(stack && stack.includes(message) ? stack : `${String(err.name)}: ${message}`);
  } catch {
    return "(an error whose message could not be read)";
  }
}

/** An error's message for a log line: one line, at most 500 characters. */
function short(err: Error | undefined): string | undefined {
  if (!err) return undefined;
  try {
    return storableText(String(err.message).replace(/\s+/g, " "), 500);
  } catch {
    return "(unreadable)";
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
