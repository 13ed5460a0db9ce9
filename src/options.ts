/**
 * The options of `open()`, each documented with its unit and default, resolved and checked
 * once; internal modules only ever see `ResolvedOptions`.
 */
import { ConfigError } from "./errors.js";
import { describe } from "./codec.js";
import { createConsoleLogger, safeLogger } from "./log.js";
import type { Logger } from "./types.js";

/** Options of `open(namespace, options)`. */
export interface OpenOptions {
  /**
   * The Postgres database: a `postgres://` URL (dmm opens a pool and closes it on
   * `bucket.close()`), a postgres.js client, or a Drizzle database on postgres.js (the app's own
   * pool; dmm never ends it). Required.
   */
  database: unknown;
  /**
   * NATS with JetStream: a `nats://` URL (comma-separated for a cluster), connection options
   * with `servers` (user/password, token, authenticator, TLS pass through to
   * `@nats-io/transport-node`), or an open `NatsConnection`. Omitted: Postgres-only dispatch,
   * where workers take work straight from the outbox (LISTEN/NOTIFY wake-ups).
   */
  nats?: unknown;
  /** Apply pending dmm migrations before opening. Defaults to false (opening checks and refuses instead). */
  migrate?: boolean;
  /** Structured logger (pino fits). Defaults to a console logger at `DMM_LOG_LEVEL` or info. */
  logger?: Logger;
  /** How long a claim is valid without a heartbeat. Defaults to 30 000 ms. */
  leaseMs?: number;
  /** How often running leases (and NATS ack waits) are extended. Defaults to leaseMs / 3. */
  heartbeatMs?: number;
  /**
   * How often each worker process looks for work nothing is dispatching: due retries and
   * resyncs, lost tokens, expired leases. Also the grace before a dispatched-but-unclaimed
   * matter counts as lost. Defaults to 10 000 ms.
   */
  sweepIntervalMs?: number;
  /** How often each worker process checks for dead workers (free advisory locks). Defaults to 1 000 ms. */
  deadWorkerCheckMs?: number;
  /** Backstop poll of the outbox when no LISTEN wake-up arrives. Defaults to 1 000 ms. */
  pollIntervalMs?: number;
  /** Largest cache, in bytes of JSON. Defaults to 262 144 (256 KiB). */
  maxCacheBytes?: number;
  /** How long `close()` waits for in-flight runs before aborting them. Defaults to 10 000 ms. */
  shutdownGraceMs?: number;
  /** Connections in the pool dmm opens from a URL. Defaults to 10. */
  poolSize?: number;
  /** Outbox rows the relay publishes per round. Defaults to 500. */
  relayBatchSize?: number;
  /**
   * With NATS: how long JetStream may be unreachable before this process's workers switch to
   * Postgres-only dispatch (they switch back as soon as it answers again). Defaults to 2 000 ms.
   */
  natsFallbackMs?: number;
}

/** Options after defaults and checks. @internal */
export interface ResolvedOptions {
  namespace: string;
  database: unknown;
  nats: unknown;
  migrate: boolean;
  logger: Logger;
  leaseMs: number;
  heartbeatMs: number;
  sweepIntervalMs: number;
  deadWorkerCheckMs: number;
  pollIntervalMs: number;
  maxCacheBytes: number;
  shutdownGraceMs: number;
  poolSize: number;
  relayBatchSize: number;
  natsFallbackMs: number;
}

/** Fills defaults and checks every field and cross-field rule. @internal */
export function resolveOptions(namespace: string, options: OpenOptions | undefined): ResolvedOptions {
  if (options === undefined || options === null || typeof options !== "object") {
    throw new ConfigError(`open("${namespace}", options) needs an options object with at least { database }.`);
  }
  if (options.database === undefined || options.database === null || options.database === "") {
    throw new ConfigError(
      `open("${namespace}") needs the database option: a postgres:// URL (for example process.env.DATABASE_URL), a postgres.js client or a Drizzle database.`,
    );
  }
  const leaseMs = ms("leaseMs", options.leaseMs, 30_000, 100);
  const heartbeatMs = ms("heartbeatMs", options.heartbeatMs, Math.max(50, Math.floor(leaseMs / 3)), 10);
  if (heartbeatMs >= leaseMs) {
    throw new ConfigError(`heartbeatMs (${heartbeatMs}) must be shorter than leaseMs (${leaseMs}), or leases expire between heartbeats.`);
  }
  return {
    namespace,
    database: options.database,
    nats: options.nats,
    migrate: options.migrate ?? false,
    logger: options.logger ? safeLogger(options.logger) : createConsoleLogger(),
    leaseMs,
    heartbeatMs,
    sweepIntervalMs: ms("sweepIntervalMs", options.sweepIntervalMs, 10_000, 10),
    deadWorkerCheckMs: ms("deadWorkerCheckMs", options.deadWorkerCheckMs, 1_000, 10),
    pollIntervalMs: ms("pollIntervalMs", options.pollIntervalMs, 1_000, 5),
    maxCacheBytes: ms("maxCacheBytes", options.maxCacheBytes, 262_144, 2),
    shutdownGraceMs: ms("shutdownGraceMs", options.shutdownGraceMs, 10_000, 0),
    poolSize: ms("poolSize", options.poolSize, 10, 3),
    relayBatchSize: ms("relayBatchSize", options.relayBatchSize, 500, 1),
    natsFallbackMs: ms("natsFallbackMs", options.natsFallbackMs, 2_000, 0),
  };
}

function ms(name: string, value: number | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min) {
    throw new ConfigError(`The option ${name} must be a finite number of at least ${min}; got ${describe(value)}.`);
  }
  return Math.floor(value);
}
