/**
 * Worker child for pg-boss: `WORK_LOOPS` `work()` loops on the measurement's queue. Each loop
 * fetches up to `BATCH_SIZE` jobs at a time and runs them with `concurrency / WORK_LOOPS`
 * handlers in parallel, so that at most `concurrency` runs are in flight per process. The
 * loops are started half a polling interval apart so that, when idle, they poll in turns.
 */
import { serveWorker } from "../lib/worker-child.js";
import type { WorkerContext } from "../lib/system.js";
import { sleep } from "../lib/util.js";
import { BATCH_SIZE, POLLING_INTERVAL_SECONDS, WORK_LOOPS, createBoss, queueFor } from "./pg-boss.js";

/** Runs `keys` through `ctx.run` with at most `parallel` at once. */
async function runBatch(ctx: WorkerContext, keys: string[], parallel: number): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < keys.length) await ctx.run(keys[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(parallel, keys.length) }, lane));
}

serveWorker(async (ctx) => {
  const boss = createBoss(`worker ${ctx.workerIndex}`, { connectionString: ctx.target.databaseUrl, max: 10, migrate: false });
  await boss.start();
  const queue = queueFor(ctx.target);
  const parallel = Math.max(1, Math.floor(ctx.concurrency / WORK_LOOPS));
  for (let i = 0; i < WORK_LOOPS; i++) {
    // Stagger the loops' polling phases evenly: idle latency is then about interval / loops.
    if (i > 0) await sleep((POLLING_INTERVAL_SECONDS * 1000) / WORK_LOOPS);
    let workerId = "";
    workerId = await boss.work<{ key: string }>(
      queue,
      { batchSize: BATCH_SIZE, pollingIntervalSeconds: POLLING_INTERVAL_SECONDS, priority: false },
      async (jobs) => {
        await runBatch(ctx, jobs.map((job) => job.data.key), parallel);
        // There may be more: fetch again now rather than after the polling interval.
        boss.notifyWorker(workerId);
      },
    );
  }
  return { stop: () => boss.stop({ graceful: true, wait: true, timeout: 10_000 }) };
});
