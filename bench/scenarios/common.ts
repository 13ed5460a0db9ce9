/** What scenarios share: the run environment, sizes, and the measurement building blocks. */
import { Databases, NATS_URL, urlForDatabase } from "../lib/db.js";
import { enqueueAll, makeKeys } from "../lib/load.js";
import { busyShare, cpuJiffies, postgresCpuUs } from "../lib/measure.js";
import type { Mode, Result } from "../lib/report.js";
import type { Producer, System, Target } from "../lib/system.js";
import { Scope, TimeoutError, sleep, wallNow } from "../lib/util.js";
import { WorkerGroup, type Totals } from "../lib/workers.js";

/** The scenario names (fixed: tools read them). */
export type ScenarioName = "throughput" | "latency" | "coalescing" | "scale" | "cost";

/** Every size a scenario uses, so that the report can list them. */
export interface Sizes {
  /** Keys per throughput measurement. */
  throughput_jobs: number;
  /** Keys per enqueue transaction. */
  enqueue_batch: number;
  /** Concurrent runs per worker process. */
  concurrency: number;
  /** Repeats of each throughput variant (median reported). */
  throughput_repeats: number;
  /** Latency samples per variant. */
  latency_samples: number;
  /** Keys used for the latency load calibration when no throughput result exists. */
  latency_calibration_jobs: number;
  coalescing_keys: number;
  coalescing_rounds: number;
  /** Pause between the start of two coalescing rounds, ms. */
  coalescing_round_ms: number;
  /** Simulated work per run in the coalescing scenario, ms. */
  coalescing_work_ms: number;
  scale_small: number;
  scale_large: number;
  /** Keys drained per scale measurement. */
  scale_jobs: number;
  /**
   * Repeats of each scale variant (medians compared): the ratio of two single drains swung
   * from 1.01 to 0.80 between two runs of the same code, with the 10,000-row drain moving.
   */
  scale_repeats: number;
  cost_items: number;
  /**
   * Repeats of the cost measurement (median reported): one drain's CPU figure swings by 10-25 %
   * on a shared host (dmm-pg 44.5-56 and graphile-worker 46-54 us in one run of three each).
   */
  cost_repeats: number;
}

/**
 * Sizes per mode. `--quick` must finish in under 3 minutes for all four systems on the 2-core
 * benchmark machine, so its numbers are coarse (short drains weigh start-up and tail more).
 */
export function sizesFor(mode: Mode, jobsOverride?: number): Sizes {
  const quick = mode === "quick";
  const sizes: Sizes = {
    throughput_jobs: quick ? 3_000 : 20_000,
    enqueue_batch: 500,
    concurrency: 16,
    throughput_repeats: quick ? 1 : 5,
    latency_samples: quick ? 30 : 500,
    latency_calibration_jobs: quick ? 1_500 : 5_000,
    coalescing_keys: 100,
    coalescing_rounds: 100,
    coalescing_round_ms: 10,
    coalescing_work_ms: 20,
    scale_small: 10_000,
    scale_large: quick ? 50_000 : 1_000_000,
    scale_jobs: quick ? 3_000 : 20_000,
    scale_repeats: quick ? 1 : 3,
    cost_items: quick ? 3_000 : 20_000,
    cost_repeats: quick ? 1 : 5,
  };
  if (jobsOverride !== undefined) {
    sizes.throughput_jobs = jobsOverride;
    sizes.scale_jobs = jobsOverride;
    sizes.cost_items = jobsOverride;
    sizes.latency_calibration_jobs = Math.min(sizes.latency_calibration_jobs, jobsOverride);
  }
  return sizes;
}

/** Shared state of one benchmark run. */
export interface Env {
  mode: Mode;
  sizes: Sizes;
  dbs: Databases;
  /** Installed template database per system name (see {@link System.install}). */
  templates: Map<string, string>;
  /** `e2e_per_s` with one process per system, from this run's throughput scenario. */
  e2eRates: Map<string, number>;
}

/** Metrics (fixed names) plus supporting detail of one measurement. */
export interface Measured {
  metrics: Record<string, number>;
  detail?: Record<string, unknown>;
}

/** One variant of a scenario: measured for every system before the next variant starts. */
export interface Variant {
  name: string;
  /** Measurements per system; numbers reported are medians. */
  repeats: number;
  /** Budget for one measurement of one system, set-up and tear-down included. */
  timeoutMs: number;
  measure(system: System, env: Env, scope: Scope): Promise<Measured>;
}

/** A scenario: its variants for this run, and optional results derived from them. */
export interface Scenario {
  name: ScenarioName;
  variants(env: Env): Variant[];
  /** Extra rows computed from the measured ones (e.g. the scale ratio). */
  derive?(results: Result[]): Result[];
}

/**
 * A fresh database for one measurement, cloned from the system's template; when `scope`
 * closes (after the workers were killed and producers closed: clean-ups run newest first) the
 * system's `dispose` runs and the database is dropped.
 */
export async function newTarget(
  env: Env,
  system: System,
  scenario: ScenarioName,
  scope: Scope,
  dedupe: boolean,
): Promise<Target & { database: string }> {
  const template = env.templates.get(system.name);
  if (template === undefined) throw new Error(`No installed template database for ${system.name}.`);
  const database = await env.dbs.create(system.name, scenario, template);
  scope.defer(`drop ${database}`, () => env.dbs.drop(database));
  const target = {
    database,
    databaseUrl: urlForDatabase(database),
    natsUrl: NATS_URL,
    namespace: `bench_${database.slice(-8)}`,
    dedupe,
  };
  if (system.dispose) scope.defer(`dispose ${system.name} state of ${target.namespace}`, () => system.dispose!(target));
  return target;
}

/** Opens the system's producer and registers its (idempotent) closing with `scope`. */
export async function openProducer(system: System, target: Target, scope: Scope): Promise<Producer & { closed: boolean }> {
  const inner = await system.openProducer(target);
  const producer = {
    closed: false,
    enqueue: (keys: readonly string[]) => inner.enqueue(keys),
    outstanding: () => inner.outstanding(),
    seedExisting: (count: number) => inner.seedExisting(count),
    async close() {
      if (producer.closed) return;
      producer.closed = true;
      await inner.close();
    },
  };
  scope.defer(`close ${system.name} producer`, () => producer.close());
  return producer;
}

/**
 * Polls `producer.outstanding()` every `intervalMs` until it reports zero and returns the
 * time (parent clock) at which the query that saw zero was sent.
 */
export async function waitOutstandingZero(
  producer: Producer,
  timeoutMs: number,
  scope: Scope,
  intervalMs = 5,
): Promise<number> {
  const deadline = wallNow() + timeoutMs;
  let last = -1;
  while (!scope.isClosed) {
    // The query's snapshot is taken when it starts: "zero" means everything had committed
    // by then, however long a count over a big table takes to come back.
    const askedAt = wallNow();
    last = await producer.outstanding();
    if (last === 0) return askedAt;
    if (wallNow() > deadline) break;
    await sleep(intervalMs);
  }
  throw new TimeoutError(`timed out after ${timeoutMs} ms waiting for outstanding work to reach 0 (still ${last})`);
}

/** Result of one drain or end-to-end run. */
export interface Drained {
  /** Keys per second. */
  rate: number;
  detail: Record<string, unknown>;
}

/** How long a single wait inside a measurement may take. */
function waitBudget(env: Env, jobs: number): number {
  // Generous: 200 items/s would be a broken system on any machine this runs on.
  return Math.max(30_000, (jobs / 200) * 1000) * (env.mode === "quick" ? 1 : 2);
}

/** What {@link measureDrain} drains. */
export interface DrainOptions {
  scenario: ScenarioName;
  procs: number;
  jobs: number;
  /** Runs after the workers were spawned and before the backlog is enqueued; returns detail. */
  beforeEnqueue?: (target: Target & { database: string }, producer: Producer) => Promise<Record<string, unknown>>;
}

/**
 * Drain from a full backlog: enqueue `jobs` keys (optionally after `beforeEnqueue`, e.g.
 * seeding) with the worker children spawned but not started, then start the workers and time
 * from the first run start until the last completion is committed.
 */
export async function measureDrain(
  system: System,
  env: Env,
  outer: Scope,
  opts: DrainOptions,
): Promise<Drained> {
  const scope = outer.child();
  try {
    return await drain(system, env, scope, opts);
  } finally {
    await scope.close();
  }
}

async function drain(
  system: System,
  env: Env,
  scope: Scope,
  opts: DrainOptions,
): Promise<Drained> {
  const { sizes } = env;
  const target = await newTarget(env, system, opts.scenario, scope, false);
  const [producer, group] = await Promise.all([
    openProducer(system, target, scope),
    WorkerGroup.spawn(system, opts.procs, scope),
  ]);
  scope.step = "preparing the backlog";
  const setup = opts.beforeEnqueue ? await opts.beforeEnqueue(target, producer) : {};
  const keys = makeKeys("d-", opts.jobs);
  await enqueueAll(producer, keys, sizes.enqueue_batch);
  // Every drain starts from the same point: the backlog (and in the scale scenario the seeded
  // rows and their vacuum, hundreds of MB of WAL) written out, so that no checkpoint started by
  // the set-up runs during one system's drain and not during another's.
  scope.step = "checkpoint before the drain";
  await env.dbs.admin`CHECKPOINT`;
  scope.step = `draining ${opts.jobs} jobs`;
  const cpuBefore = { postgres: await postgresCpuUs(env.dbs.admin), workers: group.cpuUs(), machine: cpuJiffies() };
  const startSentAt = wallNow();
  await group.start(target, { concurrency: sizes.concurrency, workMs: 0, tracePrefix: null });
  const totals = await group.waitFor((t) => t.done >= opts.jobs, `${opts.jobs} runs`, waitBudget(env, opts.jobs));
  const endAt = await waitOutstandingZero(producer, waitBudget(env, opts.jobs), scope);
  const cpuAfter = { postgres: await postgresCpuUs(env.dbs.admin), workers: group.cpuUs(), machine: cpuJiffies() };
  const final = await group.flush();
  scope.step = "stopping the workers";
  await group.stop();
  const firstStartAt = totals.firstStartAt!;
  return {
    rate: opts.jobs / ((endAt - firstStartAt) / 1000),
    detail: {
      ...setup,
      jobs: opts.jobs,
      startup_ms: round1(firstStartAt - startSentAt),
      per_s_incl_startup: Math.round(opts.jobs / ((endAt - startSentAt) / 1000)),
      handlers_done_to_committed_ms: round1(endAt - totals.lastDoneAt!),
      cpu: drainCpu(cpuBefore, cpuAfter, opts.jobs),
      ...runChecks(final, opts.jobs),
    },
  };
}

/** CPU readings around a drain: all Postgres processes, the worker children, the machine. */
interface CpuReading {
  postgres: number | null;
  workers: number | null;
  machine: ReturnType<typeof cpuJiffies>;
}

/**
 * Where a drain's CPU went, per item (µs): Postgres (every process of the server) and the
 * worker children, from the start command to the last committed completion (worker start-up
 * after the command included, in /proc's 10 ms ticks), and the machine's busy share over the
 * same window. A busy share near 1 says the drain was CPU-bound: on a shared 2-core machine its
 * rate is then about 2 cores over the CPU per item of everything that runs (the NATS server,
 * for dmm-nats, is in the busy share but in neither figure).
 */
function drainCpu(before: CpuReading, after: CpuReading, items: number): Record<string, number | null> {
  const perItem = (a: number | null, b: number | null) => (a === null || b === null ? null : round1((b - a) / items));
  return {
    postgres_us_per_item: perItem(before.postgres, after.postgres),
    workers_us_per_item: perItem(before.workers, after.workers),
    machine_busy: busyShare(before.machine, after.machine),
  };
}

/**
 * End to end: worker children started and idle, then enqueue `jobs` keys in batches while they
 * work; time from the first enqueue until the last completion is committed.
 */
export async function measureEndToEnd(
  system: System,
  env: Env,
  outer: Scope,
  opts: { scenario: ScenarioName; procs: number; jobs: number },
): Promise<Drained> {
  const scope = outer.child();
  try {
    const target = await newTarget(env, system, opts.scenario, scope, false);
    const [producer, group] = await Promise.all([
      openProducer(system, target, scope),
      WorkerGroup.spawn(system, opts.procs, scope),
    ]);
    await group.start(target, { concurrency: env.sizes.concurrency, workMs: 0, tracePrefix: null });
    const drained = await endToEnd(env, scope, producer, group, makeKeys("e-", opts.jobs));
    scope.step = "stopping the workers";
    await group.stop();
    return drained;
  } finally {
    await scope.close();
  }
}

/** The timed part of an end-to-end run, on an already started group. */
export async function endToEnd(
  env: Env,
  scope: Scope,
  producer: Producer,
  group: WorkerGroup,
  keys: readonly string[],
): Promise<Drained> {
  scope.step = `enqueueing and processing ${keys.length} jobs`;
  const before = group.totals().done;
  const startAt = wallNow();
  await enqueueAll(producer, keys, env.sizes.enqueue_batch);
  const enqueuedAt = wallNow();
  await group.waitFor((t) => t.done - before >= keys.length, `${keys.length} runs`, waitBudget(env, keys.length));
  const endAt = await waitOutstandingZero(producer, waitBudget(env, keys.length), scope);
  const final = await group.flush();
  return {
    rate: keys.length / ((endAt - startAt) / 1000),
    detail: {
      jobs: keys.length,
      enqueue_per_s: Math.round(keys.length / ((enqueuedAt - startAt) / 1000)),
      ...runChecks({ ...final, done: final.done - before, started: final.started - before }, keys.length),
    },
  };
}

/** Duplicate runs and same-key overlaps, which should both be zero with distinct keys. */
function runChecks(t: Totals, expected: number): Record<string, number> {
  return { runs: t.done, extra_runs: t.done - expected, overlaps: t.overlaps };
}

/** Rounds to 0.1. */
export function round1(x: number): number {
  return Math.round(x * 10) / 10;
}
