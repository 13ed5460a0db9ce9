/**
 * `coalescing`: `coalescing_keys` keys, each enqueued `coalescing_rounds` times (one
 * transaction per round containing every key, rounds started every `coalescing_round_ms`)
 * while each run takes `coalescing_work_ms`. Metric `runs`: handler executions until nothing
 * is outstanding. A system that coalesces perfectly runs a key at most once per enqueue that
 * arrived while it was queued or running; one that does not runs rounds × keys times.
 *
 * Correctness is checked too, from timestamps: `missed` counts keys whose last run started
 * before their last enqueue transaction was even sent (that change was never looked at);
 * `unverified` counts keys whose last run started while that transaction was in flight (it may
 * or may not have seen it: the parent stamps the commit only when it processes the reply, which
 * a busy machine delays). No key may run twice at once in a process (`overlaps`).
 */
import { makeKeys } from "../lib/load.js";
import type { System } from "../lib/system.js";
import { Scope, sleep, wallNow, warn } from "../lib/util.js";
import { WorkerGroup } from "../lib/workers.js";
import { newTarget, openProducer, round1, waitOutstandingZero, type Env, type Measured, type Scenario } from "./common.js";

async function measure(system: System, env: Env, scope: Scope): Promise<Measured> {
  const { sizes } = env;
  const target = await newTarget(env, system, "coalescing", scope, true);
  const [producer, group] = await Promise.all([
    openProducer(system, target, scope),
    WorkerGroup.spawn(system, 1, scope),
  ]);
  const lastRunStart = new Map<string, number>();
  const off = group.onTrace((key, at) => lastRunStart.set(key, Math.max(at, lastRunStart.get(key) ?? 0)));
  scope.defer("stop tracing", off);
  await group.start(target, { concurrency: sizes.concurrency, workMs: sizes.coalescing_work_ms, tracePrefix: "c-" });

  scope.step = "enqueueing the coalescing rounds";
  const keys = makeKeys("c-", sizes.coalescing_keys);
  let lastSentAt = 0;
  let lastCommittedAt = 0;
  const startAt = wallNow();
  for (let round = 0; round < sizes.coalescing_rounds; round++) {
    const wait = startAt + round * sizes.coalescing_round_ms - wallNow();
    if (wait > 0) await sleep(wait);
    lastSentAt = wallNow();
    await producer.enqueue(keys); // every round holds every key: the last round is every key's last enqueue
    lastCommittedAt = wallNow();
  }
  const enqueuedAt = wallNow();
  scope.step = "waiting for the runs to settle";
  const budget = env.mode === "quick" ? 60_000 : 300_000;
  const idleAt = await waitOutstandingZero(producer, budget, scope, 20);
  const totals = await group.waitFor((t) => t.inFlight === 0 && t.done === t.started, "in-flight runs to finish", budget);
  await group.flush(); // every trace was sent before this answer
  const lastRun = (key: string) => lastRunStart.get(key) ?? -Infinity;
  const missed = keys.filter((key) => lastRun(key) < lastSentAt).length;
  const unverified = keys.filter((key) => lastRun(key) >= lastSentAt && lastRun(key) <= lastCommittedAt).length;
  if (missed > 0) warn(`${system.name} coalescing: ${missed} keys had no run after their last enqueue`);
  const planned = sizes.coalescing_rounds * sizes.coalescing_round_ms;
  if (enqueuedAt - startAt > 1.5 * planned) {
    warn(`${system.name} coalescing: enqueueing took ${Math.round(enqueuedAt - startAt)} ms instead of ${planned} ms (slow enqueue transactions)`);
  }
  await group.stop();
  return {
    metrics: { runs: totals.started },
    detail: {
      keys: sizes.coalescing_keys,
      enqueues: sizes.coalescing_keys * sizes.coalescing_rounds,
      rounds: sizes.coalescing_rounds,
      work_ms: sizes.coalescing_work_ms,
      enqueue_ms: round1(enqueuedAt - startAt),
      settle_ms: round1(idleAt - enqueuedAt),
      missed,
      unverified,
      last_commit_ms: round1(lastCommittedAt - lastSentAt),
      overlaps: totals.overlaps,
    },
  };
}

/** The coalescing scenario. */
export const coalescing: Scenario = {
  name: "coalescing",
  variants(env) {
    return [{ name: "default", repeats: 1, timeoutMs: env.mode === "quick" ? 120_000 : 600_000, measure }];
  },
};
