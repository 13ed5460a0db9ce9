/**
 * The adapter contract every benchmarked system implements.
 *
 * A system is benchmarked through two halves that run in different processes:
 *
 * - the **app side** ({@link System} and its {@link Producer}) runs in the benchmark's own
 *   process: it installs the schema, enqueues work exactly as an application would (each
 *   `enqueue` call is one committed transaction), seeds idle rows and answers "is anything
 *   still outstanding?";
 * - the **worker side** runs in real child processes spawned from
 *   {@link System.workerScript}. That script calls `serveWorker(startWorker)` from
 *   `bench/lib/worker-child.ts` with a {@link StartWorker} function; the harness drives it
 *   over IPC (start, stop, clock calibration) and receives progress from it.
 *
 * The harness knows nothing about any system's tables or APIs: everything system-specific
 * lives behind these interfaces, so that `dmm-nats` and `dmm-pg` are added later as one
 * module, `bench/systems/dmm.ts` (plus its worker script), registered in
 * `bench/systems/index.ts`.
 *
 * Rules an adapter must follow for the numbers to mean the same thing across systems:
 *
 * 1. `enqueue(keys)` commits all keys in ONE transaction and resolves only after the commit
 *    returned (latency is measured from that moment).
 * 2. The worker handler calls `ctx.run(key)` first thing for every run/job and awaits it
 *    before reporting success to its library (it does the simulated work and the timing).
 * 3. `outstanding()` is exact: it counts every enqueued unit of work that is queued, running
 *    or whose completion has not been committed yet, and nothing else (not seeded rows).
 * 4. Use the system's fastest documented configuration and say which in {@link System.notes}.
 */

/** Where one measurement runs: a fresh database of its own and a unique namespace. */
export interface Target {
  /** Connection string of the measurement's own database (created fresh by the harness). */
  databaseUrl: string;
  /** NATS server URL, for systems that use NATS. */
  natsUrl: string;
  /**
   * A name unique to this measurement (`[a-z0-9_]`, at most 40 characters), usable as a dmm
   * bucket namespace or NATS stream prefix, so that no broker state leaks between
   * measurements that share the NATS server.
   */
  namespace: string;
  /**
   * True in the coalescing scenario: the same key is enqueued many times and the system should
   * use its best deduplication option (graphile-worker `jobKey`, pg-boss queue policy, dmm's
   * per-identity matter). False elsewhere: every key is distinct and the fastest
   * non-deduplicating path should be used.
   */
  dedupe: boolean;
}

/** The app side of a system, opened once per measurement in the benchmark process. */
export interface Producer {
  /**
   * Enqueue (notify) one unit of work per key, all in one transaction. Resolves after the
   * commit returned. Keys are unique within one call.
   */
  enqueue(keys: readonly string[]): Promise<void>;
  /**
   * The exact number of enqueued units of work not yet finished: queued, due, running, or done
   * by the handler but with the completion not yet committed. Seeded rows
   * ({@link Producer.seedExisting}) are never counted. Called only near the end of a
   * measurement (it may be a `count(*)`).
   */
  outstanding(): Promise<number>;
  /**
   * Put `count` rows into the system's tables that exist but need no work during the
   * measurement (the scale scenario: "how does throughput depend on what is already there").
   * Describe the chosen equivalent in {@link System.notes}. Setup only: not timed.
   */
  seedExisting(count: number): Promise<void>;
  /** Close every connection the producer opened. */
  close(): Promise<void>;
}

/** A benchmarked system: its name, how its worker child is started, and its app side. */
export interface System {
  /** Name in results and reports, e.g. `graphile-worker`, `dmm-pg`. `[a-z0-9-]+`. */
  readonly name: string;
  /**
   * Lines for the report describing the configuration used: pool sizes, batching, the
   * deduplication option, what "existing rows" are for the scale scenario.
   */
  readonly notes: readonly string[];
  /** Absolute path of the worker child script (TypeScript, run with `node --import tsx`). */
  readonly workerScript: string;
  /**
   * Install the schema (migrations, queues) into a fresh empty database. The database is then
   * used as a template for the measurements' databases, so this must close every connection it
   * opened before it resolves.
   */
  install(target: Target): Promise<void>;
  /** Open the app side against a measurement database that was cloned from the template. */
  openProducer(target: Target): Promise<Producer>;
  /**
   * Optional: remove what a measurement left outside its database, such as the NATS stream of
   * `target.namespace`. Called once per measurement database (also after a failure or timeout),
   * after its workers and producers are gone and before the database is dropped.
   */
  dispose?(target: Target): Promise<void>;
}

/** What the harness hands to a worker child's {@link StartWorker}. */
export interface WorkerContext {
  /** The measurement's database, namespace and mode. */
  target: Target;
  /** How many runs this process executes at once (16 in every scenario). */
  concurrency: number;
  /**
   * Call at the very start of every run/job with its key and await it before returning to
   * the library. It timestamps the start (latency), does the scenario's simulated work (a
   * sleep of a few ms, or nothing) and counts the completion. Never throws.
   */
  run(key: string): Promise<void>;
  /** Index of this worker process within the measurement (0 or 1). */
  workerIndex: number;
}

/** A running worker, as returned by {@link StartWorker}. */
export interface WorkerHandle {
  /** Stop taking work, let in-flight runs finish, commit their completions, disconnect. */
  stop(): Promise<void>;
}

/**
 * Starts the system's worker inside a child process; resolves once it is taking work
 * (connections open, listeners registered). Export it from the worker script via
 * `serveWorker(startWorker)`.
 */
export type StartWorker = (ctx: WorkerContext) => Promise<WorkerHandle>;
