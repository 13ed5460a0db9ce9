/**
 * `latency`: enqueue committed → handler start, one key at a time. `idle`: nothing else is
 * happening. `loaded`: a paced background load of half the system's own `e2e_per_s` (one
 * process, from this run's throughput scenario, or a short calibration run) is enqueued by a
 * separate load-generator process and processed by the same worker meanwhile.
 *
 * Every measurement starts alike: a CHECKPOINT (buffers dirtied by earlier scenarios written
 * back) and a wait until the machine is quiet (busy CPU at most 25% over half a second, at most
 * 15 s; the share is in the detail as cpu_busy_before). Without it the system measured first
 * after the throughput scenario took its samples while Postgres and JetStream were still
 * catching up (1-minute load average 7.0 at its start in the run of 21:24 UTC, 4.8 at the next).
 */
import { makeKeys } from "../lib/load.js";
import { LoadProcess } from "../lib/load-process.js";
import { latencySummary, round } from "../lib/stats.js";
import { waitForQuiet } from "../lib/measure.js";
import type { Producer, System } from "../lib/system.js";
import { Scope, sleep, wallNow, withTimeout, warn } from "../lib/util.js";
import { WorkerGroup } from "../lib/workers.js";
import { systemModuleUrl } from "../systems/index.js";
import { endToEnd, newTarget, openProducer, type Env, type Measured, type Scenario } from "./common.js";

/**
 * Pause between two samples: random, uniform over [GAP_MIN_MS, GAP_MIN_MS + span) where span
 * is at least GAP_SPREAD_MS and at least the largest latency seen so far (capped at
 * GAP_SPREAD_MAX_MS). A polling system
 * (pg-boss) must be met at random phases of its poll cycle; with short fixed gaps every
 * sample would arrive right after the poll that picked up the previous one and measure the
 * same part of the cycle every time. For push-based systems the gaps stay a few ms.
 */
const GAP_MIN_MS = 5;
const GAP_SPREAD_MS = 10;
/** Upper bound of the span: comfortably above the longest poll interval in play (pg-boss, 500 ms). */
const GAP_SPREAD_MAX_MS = 600;
/** Background load runs this long before the first sample. */
const WARMUP_MS = 1_000;
/**
 * Samples taken and dropped first, the same for every system: the first job after a worker
 * starts also pays for its connections' first statements (plans, function compilation) and
 * first pulls, 10–50 ms, which is start-up, not the latency asked about. Kept in the detail.
 */
const WARMUP_SAMPLES = 3;

/**
 * Takes `count` samples after `warmup` dropped ones (returned apart): register interest in the
 * key's trace, enqueue it in its own transaction, stamp the time once the commit returned, wait
 * for the handler start.
 */
async function sample(producer: Producer, group: WorkerGroup, count: number, warmup: number): Promise<{ samples: number[]; dropped: number[] }> {
  const waiting = new Map<string, (at: number) => void>();
  const off = group.onTrace((key, at) => {
    waiting.get(key)?.(at);
    waiting.delete(key);
  });
  const samples: number[] = [];
  const dropped: number[] = [];
  let maxSeen = 0;
  try {
    for (let i = -warmup; i < count; i++) {
      const key = i < 0 ? `lat-warmup${-i}` : `lat-${i}`;
      const started = new Promise<number>((resolve) => waiting.set(key, resolve));
      await producer.enqueue([key]);
      const committedAt = wallNow();
      const startedAt = await withTimeout(Promise.race([started, group.failure]), 30_000, `the handler start of ${key}`);
      if (i < 0) {
        dropped.push(startedAt - committedAt);
        continue;
      }
      samples.push(startedAt - committedAt);
      maxSeen = Math.max(maxSeen, startedAt - committedAt);
      await sleep(GAP_MIN_MS + Math.random() * Math.min(GAP_SPREAD_MAX_MS, Math.max(GAP_SPREAD_MS, maxSeen)));
    }
  } finally {
    off();
  }
  return { samples, dropped };
}

async function measure(system: System, env: Env, scope: Scope, loaded: boolean): Promise<Measured> {
  const target = await newTarget(env, system, "latency", scope, false);
  const [producer, group] = await Promise.all([
    openProducer(system, target, scope),
    WorkerGroup.spawn(system, 1, scope),
  ]);
  await group.start(target, { concurrency: env.sizes.concurrency, workMs: 0, tracePrefix: "lat-" });
  const detail: Record<string, unknown> = { samples: env.sizes.latency_samples };
  // The same start for every system: dirty buffers of earlier scenarios written, machine quiet.
  scope.step = "waiting for a quiet machine";
  await env.dbs.admin`CHECKPOINT`;
  detail.cpu_busy_before = await waitForQuiet();
  let load: LoadProcess | undefined;
  if (loaded) {
    let rate = env.e2eRates.get(system.name);
    if (rate === undefined) {
      const cal = await endToEnd(env, scope, producer, group, makeKeys("cal-", env.sizes.latency_calibration_jobs));
      rate = cal.rate;
      detail.load_rate_source = "calibration run in this measurement";
    } else {
      detail.load_rate_source = "throughput/1proc e2e_per_s of this run";
    }
    // In a process of its own: generating load here would delay the commit timestamps.
    scope.step = "starting the background load";
    load = await LoadProcess.spawn(systemModuleUrl(system.name), system.name, scope);
    detail.load_target_per_s = Math.round(rate / 2);
    await load.start(target, rate / 2);
    await sleep(WARMUP_MS);
  }
  scope.step = `taking ${env.sizes.latency_samples} latency samples`;
  const { samples, dropped } = await sample(producer, group, env.sizes.latency_samples, WARMUP_SAMPLES);
  detail.warmup_ms = dropped.map((ms) => round(ms, 2));
  scope.step = "stopping";
  if (load) {
    const { achievedPerS } = await load.stop();
    detail.load_achieved_per_s = Math.round(achievedPerS);
    detail.backlog_at_end = await producer.outstanding();
  }
  const negative = samples.filter((s) => s < 0).length;
  if (negative > 0) warn(`${system.name} latency: ${negative} samples below zero (handler start stamped before the parent saw the commit)`);
  detail.negative_samples = negative;
  detail.max_ms = round(Math.max(...samples), 2);
  // Where the tail sits in the sequence (a cold start shows as the first samples).
  detail.slowest = samples.map((ms, i) => ({ i, ms: round(ms, 2) })).sort((a, b) => b.ms - a.ms).slice(0, 5);
  detail.clock_offsets_ms = group.workers.map((w) => round(w.clockOffsetMs, 4));
  await group.stop();
  return { metrics: latencySummary(samples), detail };
}

/** The latency scenario. */
export const latency: Scenario = {
  name: "latency",
  variants(env) {
    const timeoutMs = env.mode === "quick" ? 120_000 : 900_000;
    return [
      { name: "idle", repeats: 1, timeoutMs, measure: (s, e, scope) => measure(s, e, scope, false) },
      { name: "loaded", repeats: 1, timeoutMs, measure: (s, e, scope) => measure(s, e, scope, true) },
    ];
  },
};
