/**
 * IPC messages between the benchmark process and its worker children (Node's `process.send`
 * channel, JSON-serialized). Times are {@link wallNow} milliseconds of the sending process.
 */
import type { Target } from "./system.js";

/** Parent → child. */
export type ParentMessage =
  | {
      type: "start";
      target: Target;
      concurrency: number;
      /** Simulated work per run, in ms (0 = none). */
      workMs: number;
      /** Runs whose key starts with this prefix are reported one by one; null = none. */
      tracePrefix: string | null;
      workerIndex: number;
    }
  | { type: "stop" }
  | { type: "clock"; seq: number }
  | { type: "flush" };

/** Counters a child reports; all cumulative since `start`. */
export interface Progress {
  /** Runs that entered `ctx.run`. */
  started: number;
  /** Runs whose simulated work finished. */
  done: number;
  /** Runs in flight now. */
  inFlight: number;
  /** Runs that started while another run of the same key was in flight in this process. */
  overlaps: number;
  /** Start time of the first run, or null. */
  firstStartAt: number | null;
  /** Completion time of the latest run, or null. */
  lastDoneAt: number | null;
}

/** Child → parent. */
export type ChildMessage =
  | { type: "loaded" }
  | { type: "ready" }
  | ({ type: "progress" } & Progress)
  | { type: "trace"; key: string; at: number }
  | { type: "clock"; seq: number; at: number }
  | { type: "stopped" }
  | { type: "error"; message: string };
