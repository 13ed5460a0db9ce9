/**
 * Worker child for graphile-worker: one `run()` runner with the benchmark's task list; the
 * task hands each job's key to the harness.
 */
import { run } from "graphile-worker";
import { serveWorker } from "../lib/worker-child.js";
import { TASK, WORKER_PRESET, quietLogger } from "./graphile-worker.js";

serveWorker(async (ctx) => {
  const runner = await run({
    connectionString: ctx.target.databaseUrl,
    concurrency: ctx.concurrency,
    maxPoolSize: ctx.concurrency + 1,
    noHandleSignals: true,
    logger: quietLogger,
    crontab: "",
    preset: WORKER_PRESET,
    taskList: {
      [TASK]: async (payload) => {
        await ctx.run((payload as { key: string }).key);
      },
    },
  });
  return { stop: () => runner.stop() };
});
