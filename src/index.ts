/**
 * dmm: the Durable Materialization Machine. The Kubernetes controller pattern for TypeScript
 * apps that keep their state in Postgres. See README.md for the guide.
 */
export { open, migrate } from "./bucket.js";
export type { Bucket, WorkStream, WorkOptions, WriteOptions } from "./bucket.js";
export type { OpenOptions } from "./options.js";
export type { KindOptions } from "./registry.js";
export type { EngineStats as WorkerStats, RunEndEvent } from "./worker/engine.js";
export type {
  Context,
  Materializer,
  MaterializerClass,
  MatterView,
  MatterState,
  RunReason,
  Logger,
  DrizzleExecutor,
} from "./types.js";
export {
  DmmError,
  ConfigError,
  InvalidNameError,
  InvalidIdentityError,
  InvalidCacheError,
  CacheTooLargeError,
  UnknownKindError,
  UnregisteredClassError,
  SchemaVersionError,
  LeaseLostError,
  ClosedError,
  RunTimeoutError,
  ConnectionError,
  TerminalError,
  RetryAfterError,
  coerceError,
} from "./errors.js";
export { createConsoleLogger } from "./log.js";
export type { LogLevel } from "./log.js";
export { renderStatus, renderStatusList, renderStatusDetail, statusRows, statusSummary, useColor, watchStatus, type StatusMatter, type StatusOptions, type StatusRow, type WatchOptions } from "./status/index.js";
