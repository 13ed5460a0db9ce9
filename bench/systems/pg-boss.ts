/**
 * pg-boss 10 (the major version that runs on Node 20), in the configuration that drained
 * fastest on the benchmark machine: batched fetch (`batchSize: 500`) from two `work()` loops
 * per process (pg-boss 10 has no per-worker concurrency option; each loop runs its batch with
 * 8 handlers in parallel, 16 per process), `priority: false` (no priority sort key), the
 * minimum polling interval (0.5 s), and a handler that calls the documented
 * `notifyWorker(id)` after every non-empty batch so that a loop keeps fetching while there is
 * work instead of sleeping out the polling interval after each batch (pg-boss 10's loop
 * always does). pg-boss 10 has no LISTEN/NOTIFY wake-up: idle loops poll.
 *
 * Tried on the same machine (5,000-job drain, one process): 16 loops × 50 ≈ 3.4k/s,
 * 4 × 250 ≈ 5.5–7.5k/s, 2 × 500 ≈ 14.5k/s, 1 × 1,000 ≈ 12.6–17.7k/s; with 20,000 jobs all of
 * them fall to ≈ 3–4k/s, because every fetch sorts all pending jobs (`ORDER BY created_on, id`
 * is not served by an index). Two loops were kept as the better-latency equal of one.
 */
import { fileURLToPath } from "node:url";
import PgBoss from "pg-boss";
import type { Producer, System, Target } from "../lib/system.js";

/** Queue for distinct keys (policy `standard`). */
export const QUEUE = "bench";
/** Queue for the coalescing scenario (policy `stately`: at most one queued and one active job per key). */
export const DEDUPE_QUEUE = "bench_dedupe";
/** Jobs fetched per `work()` loop iteration. */
export const BATCH_SIZE = 500;
/** `work()` loops per worker process. */
export const WORK_LOOPS = 2;
/** pg-boss's minimum (`MIN_POLLING_INTERVAL_MS` = 500). */
export const POLLING_INTERVAL_SECONDS = 0.5;

/** The queue a measurement uses. */
export function queueFor(target: Target): string {
  return target.dedupe ? DEDUPE_QUEUE : QUEUE;
}

/**
 * Creates a PgBoss instance whose `error` events go to stderr, labelled with `role` (an
 * `error` event without a listener would throw).
 */
export function createBoss(role: string, options: PgBoss.ConstructorOptions): PgBoss {
  const boss = new PgBoss({ schedule: false, ...options });
  boss.on("error", (err) => process.stderr.write(`[pg-boss ${role} error] ${err.message}\n`));
  return boss;
}

/** Rows seeded per INSERT in `seedExisting`. */
const SEED_CHUNK = 100_000;

async function openProducer(target: Target): Promise<Producer> {
  const boss = createBoss("producer", { connectionString: target.databaseUrl, max: 4, supervise: false, migrate: false });
  await boss.start();
  const db = boss.getDb();
  const queue = queueFor(target);
  return {
    async enqueue(keys) {
      // One multi-row INSERT (json_to_recordset), so one transaction per batch.
      await boss.insert(keys.map((key) => ({ name: queue, data: { key }, singletonKey: target.dedupe ? key : undefined })));
    },
    async outstanding() {
      // Completed jobs stay in the table (state 'completed'); seeded jobs start a year ahead.
      const { rows } = await db.executeSql(
        `SELECT count(*)::int AS n FROM pgboss.job
          WHERE name = $1 AND state < 'completed' AND start_after < now() + interval '1 day'`,
        [queue],
      );
      return (rows[0] as { n: number }).n;
    },
    async seedExisting(count) {
      // Plain SQL for speed (setup only): the same columns pg-boss's insert would fill.
      for (let done = 0; done < count; done += SEED_CHUNK) {
        await db.executeSql(
          `INSERT INTO pgboss.job (name, data, start_after, keep_until, policy)
           SELECT $1, jsonb_build_object('seed', i), now() + interval '365 days', now() + interval '379 days',
                  (SELECT policy FROM pgboss.queue WHERE name = $1)
             FROM generate_series(1, $2::int) AS i`,
          [queue, Math.min(SEED_CHUNK, count - done)],
        );
      }
    },
    close: () => boss.stop({ graceful: false, close: true }),
  };
}

const pgBoss: System = {
  name: "pg-boss",
  notes: [
    `pg-boss 10.4.2: ${WORK_LOOPS} \`work()\` loops per process, \`batchSize: ${BATCH_SIZE}\`, each batch run with ` +
      `${16 / WORK_LOOPS} handlers in parallel (16 per process), \`priority: false\`, \`pollingIntervalSeconds: ` +
      `${POLLING_INTERVAL_SECONDS}\` (the minimum), pool \`max: 10\`, \`schedule: false\` (no cron), maintenance on as by default.`,
    "Each handler calls `boss.notifyWorker(workerId)` after a non-empty batch so that its loop fetches again at once; " +
      "pg-boss 10 otherwise waits out the polling interval after every batch. Idle loops poll (pg-boss 10 has no " +
      "LISTEN/NOTIFY); the two loops are started 0.25 s apart so that they poll in turns.",
    "Chosen by measurement: 16 loops × 50 (best latency) drained ≈ 4× slower than 2 × 500; see bench/systems/pg-boss.ts.",
    "Enqueue: `boss.insert(jobs)` (one multi-row INSERT per transaction of up to 500 jobs).",
    "Coalescing: queue policy `stately` with `singletonKey` = the key (at most one queued and one active job per key; " +
      "further inserts are dropped by ON CONFLICT DO NOTHING).",
    "Scale: existing rows are jobs of the same queue scheduled a year ahead (`start_after = now() + 365 days`), " +
      "in the same partition the fetch query scans.",
  ],
  workerScript: fileURLToPath(new URL("./pg-boss.worker.ts", import.meta.url)),
  async install(target) {
    const boss = createBoss("install", { connectionString: target.databaseUrl, max: 2, supervise: false });
    await boss.start();
    await boss.createQueue(QUEUE, { name: QUEUE, policy: "standard" });
    await boss.createQueue(DEDUPE_QUEUE, { name: DEDUPE_QUEUE, policy: "stately" });
    await boss.stop({ graceful: false, close: true });
  },
  openProducer,
};

/** The systems this module provides. */
export const systems: System[] = [pgBoss];
