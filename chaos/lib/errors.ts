/**
 * Typed errors for the chaos-test infrastructure.
 *
 * Every error carries a stable `name` and `code` so a chaos scenario can tell "the fault
 * injector broke" apart from "dmm broke", and wraps the low-level failure in `cause`.
 */

/** Stable codes for {@link ChaosError}. */
export type ChaosErrorCode =
  | "BINARY_NOT_FOUND"
  | "SERVER_START"
  | "SERVER_STOP"
  | "SERVER_STATE"
  | "WAIT_TIMEOUT";

/** Base class of every error thrown by `chaos/lib`. */
export class ChaosError extends Error {
  override readonly name: string = "ChaosError";
  /** Machine-readable reason; see {@link ChaosErrorCode}. */
  readonly code: ChaosErrorCode;

  constructor(message: string, code: ChaosErrorCode, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * A server binary the harness needs is not on this machine. The message names the binary's path
 * and the command that installs it.
 */
export class BinaryNotFoundError extends ChaosError {
  override readonly name = "BinaryNotFoundError";
  /** The path that was looked for. */
  readonly binary: string;

  constructor(binary: string, installHint: string, options?: { cause?: unknown }) {
    super(`The binary ${binary} does not exist or is not executable. Install it with \`${installHint}\`.`, "BINARY_NOT_FOUND", options);
    this.binary = binary;
  }
}

/**
 * A private server did not become ready: it exited during start-up, or it did not answer before
 * the deadline. The message ends with the tail of the server's log, which usually names the
 * reason (port in use, bad data directory, ...).
 */
export class ServerStartError extends ChaosError {
  override readonly name = "ServerStartError";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "SERVER_START", options);
  }
}

/**
 * A graceful stop did not finish before its deadline, so the harness killed the process with
 * SIGKILL. The process is gone when this is thrown; what failed is only the "graceful" part.
 */
export class ServerStopError extends ChaosError {
  override readonly name = "ServerStopError";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "SERVER_STOP", options);
  }
}

/** A lifecycle method was called in a state where it makes no sense, e.g. `start()` after `dispose()`. */
export class ServerStateError extends ChaosError {
  override readonly name = "ServerStateError";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "SERVER_STATE", options);
  }
}

/**
 * A condition polled by {@link waitFor} did not hold before its deadline. `cause` is the last
 * error the probe threw, if any.
 */
export class WaitTimeoutError extends ChaosError {
  override readonly name = "WaitTimeoutError";
  /** How long the caller waited, in milliseconds. */
  readonly timeoutMs: number;

  constructor(description: string, timeoutMs: number, options?: { cause?: unknown }) {
    const reason = options?.cause instanceof Error ? ` Last probe error: ${options.cause.message}` : "";
    super(`Timed out after ${timeoutMs} ms waiting for ${description}.${reason}`, "WAIT_TIMEOUT", options);
    this.timeoutMs = timeoutMs;
  }
}
