/**
 * `cost`: what one item costs the server, and how much memory a worker process needs. One
 * worker process; `cost_items` keys enqueued in batches while it works (as `e2e_per_s`).
 *
 * The window opens before the worker connects and closes after the worker and the producer
 * disconnected and their backends exited, because PostgreSQL 15 backends publish their
 * statistics lazily (up to ~10 s late when idle) but always when they exit. Start-up and
 * shutdown of one worker are therefore included (amortized over all items). A `CHECKPOINT`
 * before the window gives every system the same starting point for full-page writes.
 */
import { makeKeys } from "../lib/load.js";
import { backendCpuDelta, backendCpuUs, pgDelta, pgSnapshot } from "../lib/measure.js";
import { round } from "../lib/stats.js";
import type { System } from "../lib/system.js";
import { Scope, TimeoutError, sleep, wallNow, warn } from "../lib/util.js";
import { WorkerGroup } from "../lib/workers.js";
import { endToEnd, newTarget, openProducer, type Env, type Measured, type Scenario } from "./common.js";

/** Waits until no backend is connected to `database` any more (their stats are then flushed). */
async function waitBackendsGone(env: Env, database: string, timeoutMs = 15_000): Promise<void> {
  const deadline = wallNow() + timeoutMs;
  for (;;) {
    const [row] = await env.dbs.admin<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = ${database}`;
    if (row!.n === 0) return;
    if (wallNow() > deadline) throw new TimeoutError(`${row!.n} backends still connected to ${database} after ${timeoutMs} ms`);
    await sleep(20);
  }
}

async function measure(system: System, env: Env, scope: Scope): Promise<Measured> {
  const items = env.sizes.cost_items;
  const target = await newTarget(env, system, "cost", scope, false);
  const group = await WorkerGroup.spawn(system, 1, scope);
  await env.dbs.admin`CHECKPOINT`;
  const before = await pgSnapshot(env.dbs.admin, target.database);

  const producer = await openProducer(system, target, scope);
  await group.start(target, { concurrency: env.sizes.concurrency, workMs: 0, tracePrefix: null });
  const backendsBefore = await backendCpuUs(env.dbs.admin, target.database);
  const workerBefore = group.cpuUs();
  const drained = await endToEnd(env, scope, producer, group, makeKeys("k-", items));
  const workerAfter = group.cpuUs();
  const backendsAfter = await backendCpuUs(env.dbs.admin, target.database);
  const rssMb = group.peakRssMb();
  scope.step = "closing connections for the final statistics";
  await group.stop();
  await producer.close();
  await waitBackendsGone(env, target.database);
  const delta = pgDelta(before, await pgSnapshot(env.dbs.admin, target.database));

  if (delta.otherCommits > 50) {
    warn(`${system.name} cost: ${delta.otherCommits} commits in other databases during the window; WAL and CPU include that activity`);
  }
  const metrics: Record<string, number> = {
    wal_bytes_per_item: round(delta.walBytes / items, 1),
    commits_per_item: round(delta.commits / items, 4),
  };
  if (delta.cpuUs !== null) metrics.pg_cpu_us_per_item = round(delta.cpuUs / items, 1);
  if (rssMb !== null) metrics.worker_rss_mb = round(rssMb, 1);
  // The worker process's own CPU (its client library, the runs' bookkeeping), from its first
  // enqueue to the last completion: the other half of the 2-core box next to Postgres.
  if (workerBefore !== null && workerAfter !== null) metrics.worker_cpu_us_per_item = round((workerAfter - workerBefore) / items, 1);
  return {
    metrics,
    detail: {
      items,
      e2e_per_s: Math.round(drained.rate),
      commits: delta.commits,
      wal_bytes: delta.walBytes,
      pg_cpu_us: delta.cpuUs,
      backend_cpu_us_per_item: round(backendCpuDelta(backendsBefore, backendsAfter) / items, 1),
      other_db_commits: delta.otherCommits,
      run: drained.detail,
    },
  };
}

/** The cost scenario. */
export const cost: Scenario = {
  name: "cost",
  variants(env) {
    return [{ name: "default", repeats: env.sizes.cost_repeats, timeoutMs: env.mode === "quick" ? 120_000 : 900_000, measure }];
  },
};
