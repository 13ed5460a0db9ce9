/**
 * The `Context` a run receives: fenced writes collected for the finish, reads, cancellation.
 */
import { ConfigError } from "../errors.js";
import type { Context, Logger, Materializer, MaterializerClass, MatterView, RunReason } from "../types.js";
import type { NotifyItem, TouchItem } from "../store/notify.js";
import type { RunAbort } from "../async.js";

/** What a context needs from the bucket; injected so the worker stays free of I/O imports. */
export interface ContextDeps {
  prepareNotify(instance: Materializer): NotifyItem;
  prepareTouch(kind: MaterializerClass | string, identity: string): TouchItem;
  readMatter<M extends Materializer>(cls: MaterializerClass<M>, identity: string): Promise<MatterView<M> | undefined>;
  /** A Drizzle transaction that first checks (and share-locks) this run's lease. */
  fencedTransaction<T>(lease: { kind: string; identity: string; owner: string; epoch: number }, fn: (tx: any) => Promise<T>): Promise<T>;
}

/** The run-side state behind a `Context`, read by the worker when the run ends. */
export class RunContext implements Context {
  readonly notifies: NotifyItem[] = [];
  readonly touches: TouchItem[] = [];
  requeueMs: number | null = null;

  #log: Logger | undefined;

  constructor(
    readonly kind: string,
    readonly identity: string,
    readonly reason: RunReason,
    readonly attempt: number,
    readonly generation: number,
    private readonly abort: RunAbort,
    private readonly baseLog: Logger,
    private readonly owner: string,
    private readonly epoch: number,
    private readonly deps: ContextDeps,
  ) {}

  /** Aborts on lease loss, timeout or shutdown; made on first read (see RunAbort). */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** The bucket's logger with this run's kind, key and attempt; made on first read. */
  get log(): Logger {
    this.#log ??= this.baseLog.child({ kind: this.kind, key: this.identity, attempt: this.attempt });
    return this.#log;
  }

  notify(instance: Materializer): void {
    this.notifies.push(this.deps.prepareNotify(instance));
  }

  touch(cls: MaterializerClass | string, identity: string): void {
    this.touches.push(this.deps.prepareTouch(cls, identity));
  }

  matter<M extends Materializer>(cls: MaterializerClass<M>, identity: string): Promise<MatterView<M> | undefined> {
    return this.deps.readMatter(cls, identity);
  }

  transaction<T>(fn: (tx: any) => Promise<T>): Promise<T> {
    return this.deps.fencedTransaction({ kind: this.kind, identity: this.identity, owner: this.owner, epoch: this.epoch }, fn);
  }

  requeueAfter(ms: number): void {
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
      throw new ConfigError(`ctx.requeueAfter(ms) needs a finite number of milliseconds of 0 or more; got ${String(ms)}.`);
    }
    this.requeueMs = this.requeueMs === null ? ms : Math.min(this.requeueMs, ms);
  }
}
