/**
 * Public types of dmm: the materializer contract, the run context and the read-only view of a
 * matter. Nothing here does I/O; see `bucket.ts` for the implementation that fulfils them.
 */

/** Why a run was started; `ctx.reason` carries it so a materializer can log or branch on it. */
export type RunReason =
  /** A notify or touch bumped the generation since the last successful run. */
  | "notify"
  /** An earlier run failed; this is the retry its backoff scheduled. */
  | "retry"
  /** The previous run asked for a re-check (`ctx.requeueAfter`). */
  | "requeue"
  /** The kind's resync period elapsed (the k8s SyncPeriod). */
  | "resync"
  /** The previous run's worker died or lost its lease; this run picks its work up. */
  | "recovery";

/**
 * The state of a matter as `bucket.matter()` and `dmm status` report it:
 * - `running`: a worker holds a live lease;
 * - `parked`: the last run threw `TerminalError`; nothing runs until the next notify or touch;
 * - `failing`: the last run failed and a retry is scheduled (`attempts > 0`);
 * - `pending`: a run is wanted (a notify is not yet materialized, or a requeue/resync is due);
 * - `ok`: the last run succeeded and nothing newer is known.
 */
export type MatterState = "pending" | "running" | "ok" | "failing" | "parked";

/** Minimal structured logger: constant messages plus fields. pino and most app loggers fit. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line carries `fields` too. */
  child(fields: Record<string, unknown>): Logger;
}

/**
 * A user's materializer: an idempotent function bound to one identity that makes reality
 * match the database. Its own enumerable fields are its **cache**, persisted as JSON between
 * runs; `materialize` may change them, and they are saved when it returns.
 *
 * Outcomes, one way each:
 * - return → success: cache saved, attempts reset;
 * - throw → retry with per-identity exponential backoff (jittered, capped);
 * - throw `TerminalError` → parked until the next notify or touch;
 * - throw `RetryAfterError` → retry exactly after its delay;
 * - call `ctx.requeueAfter(ms)` and return → success, and a re-check after `ms`.
 */
export interface Materializer {
  /** The identity of this instance within its kind: a non-empty string of at most 512 bytes. */
  identity(): string;
  /** Make reality match the fields of this instance. Must be idempotent. */
  materialize(ctx: Context): Promise<void> | void;
}

/** A class whose instances are materializers; dmm constructs it with no arguments. */
export type MaterializerClass<M extends Materializer = Materializer> = new () => M;

/**
 * A Drizzle transaction (or database) on the app's postgres.js connection. dmm only calls
 * `execute(sql)` on it, so any Drizzle `PgDatabase`/`PgTransaction` on postgres.js fits.
 */
export interface DrizzleExecutor {
  execute(query: unknown): Promise<unknown>;
}

/** What `materialize` gets: the run's identity, reason, fenced writes and cancellation. */
export interface Context {
  /** The kind this run belongs to. */
  readonly kind: string;
  /** The identity of the matter being materialized (also when the cache is empty). */
  readonly identity: string;
  /** Why this run was started. */
  readonly reason: RunReason;
  /** 1 for the first attempt since the last success, 2 for the first retry, and so on. */
  readonly attempt: number;
  /** The generation this run materializes; it becomes `observedGeneration` on success. */
  readonly generation: number;
  /**
   * Aborted when the run must stop: its lease was lost (another worker may take over), its
   * timeout passed, or the bucket is closing. Pass it to fetch and friends.
   */
  readonly signal: AbortSignal;
  /** A logger scoped to this run (`kind`, `key`, `attempt`). */
  readonly log: Logger;
  /**
   * Notify another materializer (replace its cache, request a run). Applied in the same
   * fenced transaction as this run's successful finish; dropped if the run fails or lost its
   * lease.
   */
  notify(instance: Materializer): void;
  /** Request a run of another identity, keeping its cache; applied like `notify`. */
  touch(kind: MaterializerClass | string, identity: string): void;
  /** Read another matter (or this one as last saved); `undefined` when it does not exist. */
  matter<M extends Materializer>(cls: MaterializerClass<M>, identity: string): Promise<MatterView<M> | undefined>;
  /**
   * Run `fn` in a Drizzle transaction that first checks that this run still holds its lease
   * and keeps the matter row share-locked until commit, so a worker that lost its lease (a
   * zombie) never commits. Throws `LeaseLostError` when the lease is gone.
   */
  transaction<T>(fn: (tx: any) => Promise<T>): Promise<T>;
  /** Ask for another run `ms` after this one succeeds (a re-check of reality). */
  requeueAfter(ms: number): void;
}

/** A read-only view of a matter: its cache and its bookkeeping. */
export interface MatterView<M extends Materializer = Materializer> {
  kind: string;
  identity: string;
  /** The cache as last saved, as a plain object of the materializer's fields. */
  cache: Partial<Pick<M, { [K in keyof M]: M[K] extends (...a: any[]) => any ? never : K }[keyof M]>> & Record<string, unknown>;
  /** Bumped by every notify and touch. */
  generation: number;
  /** The generation the last successful (or parked) run started from. */
  observedGeneration: number;
  /** Failed runs since the last success. */
  attempts: number;
  /** The last failure's message (with stack where there was one), or null. */
  lastError: string | null;
  /** When the next scheduled run is due, or null. */
  dueAt: Date | null;
  /** Why that run is scheduled: `retry`, `requeue` or `resync` (null when none is). */
  dueReason: "retry" | "requeue" | "resync" | null;
  /** True while parked by a TerminalError (until the next notify or touch). */
  parked: boolean;
  state: MatterState;
  /** The worker holding the lease, its fencing epoch and expiry (null when free). */
  leaseOwner: string | null;
  leaseEpoch: number;
  leaseUntil: Date | null;
  createdAt: Date;
  updatedAt: Date;
}
