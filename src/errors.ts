/**
 * dmm's typed errors. Each has a stable `name` (and `code`) that callers may branch on, a
 * message that names the offending value and says what to do, and the underlying `cause`.
 */

/** Base class of every error dmm throws on purpose. */
export class DmmError extends Error {
  /** A stable, machine-readable code, e.g. `DMM_INVALID_IDENTITY`. */
  readonly code: string;
  constructor(message: string, options?: { cause?: unknown; code?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = options?.code ?? "DMM_ERROR";
  }
  override get name(): string {
    return this.constructor.name;
  }
}

/** An option passed to `open`, `register` or `work` is missing, of the wrong type or out of range. */
export class ConfigError extends DmmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_CONFIG" });
  }
}

/** A namespace or kind that is not `[a-z0-9_-]{1,64}`. */
export class InvalidNameError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_INVALID_NAME" });
  }
}

/** An identity that is empty, too long, not a string or not storable text. */
export class InvalidIdentityError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_INVALID_IDENTITY" });
  }
}

/** A cache that cannot be stored faithfully as JSON (bigint, cycle, function, Date, NaN, …). */
export class InvalidCacheError extends DmmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_INVALID_CACHE" });
  }
}

/** A cache whose JSON is larger than the bucket's `maxCacheBytes`. */
export class CacheTooLargeError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_CACHE_TOO_LARGE" });
  }
}

/** A kind that no `register` call in this bucket declared. */
export class UnknownKindError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_UNKNOWN_KIND" });
  }
}

/** An instance or class that was never registered with this bucket. */
export class UnregisteredClassError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_UNREGISTERED_CLASS" });
  }
}

/** The database's dmm migrations are older or newer than this version of dmm expects. */
export class SchemaVersionError extends DmmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_SCHEMA_VERSION" });
  }
}

/** This run no longer holds its lease: another worker may own the matter now. */
export class LeaseLostError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_LEASE_LOST" });
  }
}

/** The bucket is closed (or closing) and can take no more calls. */
export class ClosedError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_CLOSED" });
  }
}

/** A run exceeded its kind's `timeoutMs`; it counts as a failure and is retried with backoff. */
export class RunTimeoutError extends DmmError {
  constructor(message: string) {
    super(message, { code: "DMM_RUN_TIMEOUT" });
  }
}

/** Postgres or NATS could not be reached or refused an operation dmm needs. */
export class ConnectionError extends DmmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_CONNECTION" });
  }
}

/**
 * Throw from `materialize` to park the matter: the error is recorded and no retry follows
 * until the next notify or touch. For failures that retrying cannot fix (bad input, 404).
 */
export class TerminalError extends DmmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_TERMINAL" });
  }
}

/**
 * Throw from `materialize` to retry after exactly `retryAfterMs` instead of the backoff, e.g.
 * for an HTTP 429 with `Retry-After`. Counts as a failed attempt.
 */
export class RetryAfterError extends DmmError {
  readonly retryAfterMs: number;
  constructor(message: string, retryAfterMs: number, options?: { cause?: unknown }) {
    super(message, { ...options, code: "DMM_RETRY_AFTER" });
    if (!Number.isFinite(retryAfterMs) || retryAfterMs < 0) {
      throw new ConfigError(`RetryAfterError needs a finite delay of 0 ms or more; got ${String(retryAfterMs)}.`);
    }
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Turns anything thrown (strings, numbers, objects, undefined) into an Error, so that failure
 * handling, logging and `last_error` never depend on what user code threw.
 */
export function coerceError(thrown: unknown): Error {
  try {
    if (thrown instanceof Error) {
      // Touch what callers read: an Error whose getters throw is treated like a non-Error.
      void String(thrown.message);
      void String(thrown.stack ?? "");
      return thrown;
    }
  } catch {
    /* a hostile Error (or a Proxy posing as one): fall through */
  }
  let text: string;
  try {
    text = typeof thrown === "string" ? thrown : (JSON.stringify(thrown) ?? String(thrown));
  } catch {
    try {
      text = Object.prototype.toString.call(thrown);
    } catch {
      text = "(unreadable)";
    }
  }
  const err = new Error(`Non-Error thrown: ${text}`);
  (err as Error & { thrown?: unknown }).thrown = thrown;
  return err;
}
