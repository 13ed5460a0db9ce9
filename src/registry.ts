/**
 * The kinds a bucket knows: kind name ↔ materializer class, with per-kind options resolved.
 */
import { checkName, describe } from "./codec.js";
import { ConfigError, UnknownKindError, UnregisteredClassError } from "./errors.js";
import type { Materializer, MaterializerClass } from "./types.js";

/** Options of one kind, as passed to `bucket.register`. */
export interface KindOptions {
  /**
   * Re-run every matter of this kind at least this often (the k8s SyncPeriod), jittered ±10 %,
   * as a low-priority `resync` run. Defaults to none (`0`).
   */
  resyncPeriodMs?: number;
  /** Abort a run (`ctx.signal`) and count it as failed after this long. Defaults to 5 minutes. */
  timeoutMs?: number;
  /** Delay before the first retry after a failure. Defaults to 100 ms. */
  backoffBaseMs?: number;
  /** Longest delay between retries. Defaults to 5 minutes. */
  backoffMaxMs?: number;
}

/** A registered kind with its options filled in. */
export interface KindEntry {
  kind: string;
  cls: MaterializerClass;
  resyncPeriodMs: number;
  timeoutMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

/** Maps kinds to classes and back; one per bucket. */
export class Registry {
  readonly #byKind = new Map<string, KindEntry>();
  readonly #byClass = new Map<MaterializerClass, KindEntry>();

  /** Adds a kind; refuses a second class for a kind or a second kind for a class. */
  add(kind: string, cls: MaterializerClass, options: KindOptions = {}): KindEntry {
    checkName("kind", kind);
    if (typeof cls !== "function" || typeof cls.prototype?.materialize !== "function" || typeof cls.prototype?.identity !== "function") {
      throw new ConfigError(
        `register("${kind}", …) needs a class with identity() and materialize(ctx) methods; got ${describe(cls)}.`,
      );
    }
    if (this.#byKind.has(kind)) {
      throw new ConfigError(`The kind "${kind}" is already registered in this bucket. Register each kind once and reuse its WorkStream.`);
    }
    const other = this.#byClass.get(cls);
    if (other) {
      throw new ConfigError(`The class ${cls.name} is already registered as kind "${other.kind}"; a class maps to one kind.`);
    }
    const entry: KindEntry = {
      kind,
      cls,
      resyncPeriodMs: nonNegative(kind, "resyncPeriodMs", options.resyncPeriodMs, 0),
      timeoutMs: positive(kind, "timeoutMs", options.timeoutMs, 5 * 60_000),
      backoffBaseMs: positive(kind, "backoffBaseMs", options.backoffBaseMs, 100),
      backoffMaxMs: positive(kind, "backoffMaxMs", options.backoffMaxMs, 5 * 60_000),
    };
    if (entry.backoffMaxMs < entry.backoffBaseMs) {
      throw new ConfigError(`Kind "${kind}": backoffMaxMs (${entry.backoffMaxMs}) is below backoffBaseMs (${entry.backoffBaseMs}).`);
    }
    this.#byKind.set(kind, entry);
    this.#byClass.set(cls, entry);
    return entry;
  }

  /** The entry of a kind; `UnknownKindError` when none was registered. */
  kind(kind: string): KindEntry {
    const entry = this.#byKind.get(kind);
    if (!entry) {
      const known = [...this.#byKind.keys()].map((k) => `"${k}"`).join(", ") || "none";
      throw new UnknownKindError(
        `The kind ${describe(kind)} is not registered in this bucket (registered: ${known}). Call bucket.register(${describe(kind)}, YourClass) first.`,
      );
    }
    return entry;
  }

  /** The entry of a class; `UnregisteredClassError` when it was never registered. */
  classEntry(cls: unknown): KindEntry {
    const entry = this.#byClass.get(cls as MaterializerClass);
    if (!entry) {
      const name = typeof cls === "function" && cls.name ? cls.name : describe(cls);
      throw new UnregisteredClassError(
        `The class ${name} is not registered in this bucket. Call bucket.register("<kind>", ${name}) before notifying or touching it.`,
      );
    }
    return entry;
  }

  /** The entry of an instance's class. */
  instanceEntry(instance: Materializer): KindEntry {
    if (typeof instance !== "object" || instance === null) {
      throw new UnregisteredClassError(`notify() needs an instance of a registered materializer class; got ${describe(instance)}.`);
    }
    return this.classEntry(instance.constructor);
  }

  /** All kinds, in registration order. */
  kinds(): KindEntry[] {
    return [...this.#byKind.values()];
  }
}

function positive(kind: string, name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new ConfigError(`Kind "${kind}": ${name} must be a positive number of milliseconds; got ${describe(value)}.`);
  }
  return value;
}

function nonNegative(kind: string, name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new ConfigError(`Kind "${kind}": ${name} must be 0 (off) or a positive number of milliseconds; got ${describe(value)}.`);
  }
  return value;
}
