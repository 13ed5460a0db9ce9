/**
 * The child-process side of a benchmark worker. A system's worker script is just
 *
 * ```ts
 * import { serveWorker } from "../lib/worker-child.js";
 * serveWorker(async (ctx) => { ...start the library's worker, calling ctx.run(key) in the
 *                              handler...; return { stop } });
 * ```
 *
 * `serveWorker` speaks the IPC protocol of `protocol.ts`: it reports `loaded` once modules are
 * imported, starts the worker on `start` and reports `ready`, streams `progress` (counters, at
 * most every 10 ms, and at once whenever the process becomes idle so that the parent sees the
 * end of a drain without delay), reports `trace` for each traced run start, answers `clock`
 * pings, and on `stop` stops the worker and exits. If the parent goes away the child exits
 * immediately, so a crashed benchmark leaves no worker behind.
 */
import type { ChildMessage, ParentMessage, Progress } from "./protocol.js";
import type { StartWorker, WorkerHandle } from "./system.js";
import { errorText, sleep, wallNow } from "./util.js";

const PROGRESS_INTERVAL_MS = 10;
const STOP_TIMEOUT_MS = 15_000;

/** Runs the IPC loop of a worker child around `start`. Call once, at module top level. */
export function serveWorker(start: StartWorker): void {
  const send = process.send?.bind(process);
  if (!send) {
    console.error("This is a benchmark worker child: run it through bench/run.ts, not directly.");
    process.exit(2);
  }
  const post = (msg: ChildMessage): void => {
    if (process.connected) send(msg);
  };

  const progress: Progress = {
    started: 0,
    done: 0,
    inFlight: 0,
    overlaps: 0,
    firstStartAt: null,
    lastDoneAt: null,
  };
  const inFlightByKey = new Map<string, number>();
  let dirty = false;
  let workMs = 0;
  let tracePrefix: string | null = null;
  let handle: WorkerHandle | undefined;
  let stopping = false;

  const sendProgress = (): void => {
    dirty = false;
    post({ type: "progress", ...progress });
  };
  const timer = setInterval(() => {
    if (dirty) sendProgress();
  }, PROGRESS_INTERVAL_MS);

  const run = async (key: string): Promise<void> => {
    const at = wallNow();
    progress.started++;
    progress.inFlight++;
    if (progress.firstStartAt === null) progress.firstStartAt = at;
    const sameKey = (inFlightByKey.get(key) ?? 0) + 1;
    inFlightByKey.set(key, sameKey);
    if (sameKey > 1) progress.overlaps++;
    if (tracePrefix !== null && key.startsWith(tracePrefix)) post({ type: "trace", key, at });
    dirty = true;
    try {
      if (workMs > 0) await sleep(workMs);
    } finally {
      const left = inFlightByKey.get(key)! - 1;
      if (left === 0) inFlightByKey.delete(key);
      else inFlightByKey.set(key, left);
      progress.inFlight--;
      progress.done++;
      progress.lastDoneAt = wallNow();
      if (progress.inFlight === 0) sendProgress();
      else dirty = true;
    }
  };

  const fail = (err: unknown): void => {
    const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
    if (stopping) {
      // A library's stray promise rejecting during shutdown is not the measurement's failure.
      process.stderr.write(`[worker child] error while stopping: ${message}\n`);
      return;
    }
    post({ type: "error", message });
    setTimeout(() => process.exit(1), 50);
  };
  process.on("uncaughtException", fail);
  process.on("unhandledRejection", fail);
  // The parent died or closed the channel: nothing will ever stop us properly.
  process.on("disconnect", () => process.exit(0));

  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    try {
      if (handle) {
        let deadline: NodeJS.Timeout | undefined;
        await Promise.race([
          handle.stop(),
          new Promise((_, reject) => {
            deadline = setTimeout(
              () => reject(new Error(`worker stop() took over ${STOP_TIMEOUT_MS} ms`)),
              STOP_TIMEOUT_MS,
            );
          }),
        ]).finally(() => clearTimeout(deadline));
      }
      clearInterval(timer);
      sendProgress();
      post({ type: "stopped" });
      setTimeout(() => process.exit(0), 20);
    } catch (err) {
      post({ type: "error", message: `stop failed: ${errorText(err)}` });
      setTimeout(() => process.exit(1), 50);
    }
  };

  process.on("message", (raw: unknown) => {
    const msg = raw as ParentMessage;
    switch (msg.type) {
      case "start":
        workMs = msg.workMs;
        tracePrefix = msg.tracePrefix;
        start({ target: msg.target, concurrency: msg.concurrency, run, workerIndex: msg.workerIndex })
          .then((h) => {
            handle = h;
            if (stopping) void h.stop();
            else post({ type: "ready" });
          })
          .catch((err) => fail(new Error(`worker failed to start: ${errorText(err)}`, { cause: err })));
        break;
      case "stop":
        void stop();
        break;
      case "clock":
        post({ type: "clock", seq: msg.seq, at: wallNow() });
        break;
      case "flush":
        sendProgress();
        break;
    }
  });
  process.on("SIGTERM", () => void stop());
  process.on("SIGINT", () => void stop());

  post({ type: "loaded" });
}
