/**
 * graphile-worker 0.17, in the configuration its performance page documents as fastest
 * (https://worker.graphile.org/docs/performance): a local queue that fetches and locks jobs
 * in batches (`localQueue.size: 500`) and batched completion (`completeJobBatchDelay: 0`,
 * `failJobBatchDelay: 0`), with a pool of concurrency + 1 connections. The app side enqueues
 * with `addJobs` (one `add_jobs(...)` statement, so one transaction, per batch).
 */
import { fileURLToPath } from "node:url";
import { Logger, makeWorkerUtils, runMigrations, type WorkerUtils } from "graphile-worker";
import type { Producer, System, Target } from "../lib/system.js";

/** The one task identifier every benchmark job uses. */
export const TASK = "bench";

/** Options shared by the benchmark's worker processes (see the worker script). */
export const WORKER_PRESET = {
  worker: {
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
} as const;

/** Rows seeded per `add_jobs` call in `seedExisting`. */
const SEED_CHUNK = 50_000;

/** graphile-worker's logger with only errors and warnings, prefixed. */
export const quietLogger = new Logger(() => (level, message) => {
  const l = String(level);
  if (l === "error" || l === "warning") process.stderr.write(`[graphile-worker ${l}] ${message}\n`);
});

async function openProducer(target: Target): Promise<Producer> {
  const utils: WorkerUtils = await makeWorkerUtils({
    connectionString: target.databaseUrl,
    maxPoolSize: 4,
    logger: quietLogger,
  });
  return {
    async enqueue(keys) {
      // jobKey only in the coalescing scenario: its unique index costs every other scenario.
      await utils.addJobs(
        keys.map((key) => ({ identifier: TASK, payload: { key }, jobKey: target.dedupe ? key : undefined })),
        target.dedupe, // job_key_preserve_run_at: a re-enqueue keeps the queued job's place
      );
    },
    async outstanding() {
      // Completed jobs are deleted; seeded jobs are a year in the future.
      const { rows } = await utils.withPgClient((client) =>
        client.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM graphile_worker._private_jobs WHERE run_at < now() + interval '1 day'",
        ),
      );
      return rows[0]!.n;
    },
    async seedExisting(count) {
      for (let done = 0; done < count; done += SEED_CHUNK) {
        const n = Math.min(SEED_CHUNK, count - done);
        await utils.withPgClient((client) =>
          client.query(
            `SELECT count(*) FROM graphile_worker.add_jobs(array(
               SELECT ($1::text, json_build_object('seed', i), null, now() + interval '365 days',
                       null, null, null, null)::graphile_worker.job_spec
                 FROM generate_series(1, $2::int) AS i))`,
            [TASK, n],
          ),
        );
      }
    },
    async close() {
      await utils.release();
    },
  };
}

const graphileWorker: System = {
  name: "graphile-worker",
  notes: [
    "graphile-worker 0.17.3 with its documented fastest settings: `localQueue: { size: 500 }`, " +
      "`completeJobBatchDelay: 0`, `failJobBatchDelay: 0` (batched fetch and completion); " +
      "`concurrency: 16`, `maxPoolSize: 17`; LISTEN/NOTIFY wake-up (default `pollInterval` 2 s as backstop).",
    "Enqueue: `WorkerUtils.addJobs()` (one `graphile_worker.add_jobs` call per transaction of up to 500 jobs).",
    "Coalescing: `jobKey` = the key with `job_key_preserve_run_at` (jobKeyMode `preserve_run_at`): a queued job is " +
      "replaced in place; a running (locked) job gets a new job queued behind it.",
    "Scale: existing rows are jobs of the same task scheduled a year ahead (`run_at = now() + 365 days`): " +
      "completed jobs are deleted by graphile-worker, so future jobs are what stays in its table.",
  ],
  workerScript: fileURLToPath(new URL("./graphile-worker.worker.ts", import.meta.url)),
  async install(target) {
    await runMigrations({ connectionString: target.databaseUrl, logger: quietLogger });
  },
  openProducer,
};

/** The systems this module provides. */
export const systems: System[] = [graphileWorker];
