/**
 * `npm run chaos` (full) and `npm run chaos -- --quick` (CI): dmm under faults, on its own
 * private Postgres and nats-server (never the machine's shared 5432 / 4222).
 *
 * Several worker processes (chaos/worker.ts) work a few hundred identities per namespace, in
 * JetStream and in Postgres-only dispatch (and, in the full run, a namespace where both kinds of
 * workers share one outbox), each through its own proxies to Postgres and NATS. The run's main
 * process notifies at a steady rate (chaos/notifier.ts) while two loops inject faults
 * (chaos/faults.ts). Then it heals everything, stops notifying, waits (bounded) until every
 * identity converged, stops the workers and checks the record (chaos/checks.ts).
 *
 * Options (`--help` prints them): `--quick`, `--seed N`, `--faults-s N` (fault period),
 * `--identities N`, `--workers N`, `--json PATH` (the full run writes
 * bench/results/chaos-<timestamp>.json), `--keep-logs`, `--pg-params Q` (postgres.js URL
 * parameters for the workers, e.g. `fetch_types=false`, to try a driver mitigation),
 * `--strict` (a worker process that crashes on its own fails the run too).
 *
 * Exit code 0: zero violations; 1: violations (or crashes, with `--strict`); 2: the run itself
 * failed (a server would not start, the watchdog fired, a check did not catch its planted
 * violation); 130: interrupted. Worker logs are removed at the end unless the run had
 * violations or `--keep-logs` was given (the kept directory is printed).
 */
import { appendFile, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir, cpus, totalmem } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { migrate } from "dmm";
import { createRandom, startNatsServer, startPostgresServer, waitFor, type NatsServer, type PostgresServer } from "./lib/index.js";
import { Fleet } from "./fleet.js";
import { FAULT_KINDS, FaultInjector, withTimeout, type FaultKind } from "./faults.js";
import { Notifier } from "./notifier.js";
import { convergence, runChecks, selfTest, unconvergedMatters, type UnconvergedMatter } from "./checks.js";
import { CHAOS_SCHEMA_SQL, type WorkerBucket, type WorkerTimings, type WorkProfile } from "./model.js";
import { printReport, type ChaosReport } from "./report.js";
import { TokensProbe } from "./tokens-probe.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The knobs of one run. */
interface Plan {
  mode: "quick" | "full";
  identities: number;
  workers: number;
  namespaces: { name: string; dispatch: "nats" | "postgres" | "mixed" }[];
  faultMs: number;
  convergeTimeoutMs: number;
  /** Whole-run watchdog. */
  deadlineMs: number;
  notifyIntervalMs: number;
  notifyBatchMax: number;
  /** Random gaps between process faults and between infrastructure faults, ms. */
  processGapMs: [number, number];
  infraGapMs: [number, number];
}

const TIMINGS: WorkerTimings = {
  leaseMs: 3_000,
  heartbeatMs: 1_000,
  sweepIntervalMs: 1_000,
  deadWorkerCheckMs: 500,
  pollIntervalMs: 500,
  natsFallbackMs: 2_000,
  shutdownGraceMs: 2_000,
  poolSize: 4,
  concurrency: 8,
  backoffMaxMs: 2_000,
};

const PROFILE: WorkProfile = { longChance: 0.03, shortMs: [0, 20], longMs: [500, 4_000] };

const PROCESS_BAG: Partial<Record<FaultKind, number>> = { "worker-kill": 3, "relay-kill-after-publish": 1, "relay-kill-blocked-delete": 1 };
const INFRA_BAG: Partial<Record<FaultKind, number>> = {
  "pg-terminate-backends": 3,
  "pg-half-open": 2,
  "nats-half-open": 2,
  "pg-restart": 1,
  "pg-crash": 1,
  "nats-restart": 1,
  "nats-crash": 1,
  "token-purge": 1,
};

const HELP = `npm run chaos [-- options]: dmm under faults on a private Postgres and nats-server.

  --quick            CI size: 100 identities, 3 workers, 90 s of faults, under 3 minutes
  --seed N           replay the fault and load choices of an earlier run
  --faults-s N       length of the fault period in seconds
  --identities N     identities per namespace
  --workers N        worker processes (at least 2)
  --json PATH        write the figures there (the full run defaults to bench/results/chaos-<time>.json)
  --keep-logs        keep the worker logs (always kept when there are violations)
  --pg-params Q      postgres.js URL parameters for the workers, e.g. fetch_types=false
  --strict           worker processes that crash on their own fail the run too

Exit code 0: no violations; 1: violations; 2: the run failed; 130: interrupted.
`;

function parseArgs(argv: string[]): { plan: Plan; seed: number; json: string | null; keepLogs: boolean; strict: boolean; pgParams: string } {
  const flag = (name: string) => argv.includes(`--${name}`);
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string): number | undefined => {
    const v = value(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} needs a non-negative number; got ${JSON.stringify(v)}.`);
    return n;
  };
  if (flag("help") || argv.includes("-h")) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const known = new Set(["--quick", "--seed", "--faults-s", "--identities", "--workers", "--json", "--keep-logs", "--pg-params", "--strict"]);
  const unknown = argv.filter((a, i) => a.startsWith("-") && !known.has(a) && !["--seed", "--faults-s", "--identities", "--workers", "--json", "--pg-params"].includes(argv[i - 1] ?? ""));
  if (unknown.length > 0) {
    process.stderr.write(`Unknown option ${unknown.join(" ")}.\n\n${HELP}`);
    process.exit(2);
  }
  const quick = flag("quick");
  const plan: Plan = quick
    ? {
        mode: "quick",
        identities: 100,
        workers: 3,
        namespaces: [
          { name: "chaos_nats", dispatch: "nats" },
          { name: "chaos_pg", dispatch: "postgres" },
        ],
        faultMs: 90_000,
        convergeTimeoutMs: 40_000,
        deadlineMs: 178_000,
        notifyIntervalMs: 50,
        notifyBatchMax: 4,
        processGapMs: [3_000, 8_000],
        infraGapMs: [1_000, 4_000],
      }
    : {
        mode: "full",
        identities: 300,
        workers: 4,
        namespaces: [
          { name: "chaos_nats", dispatch: "nats" },
          { name: "chaos_pg", dispatch: "postgres" },
          { name: "chaos_mixed", dispatch: "mixed" },
        ],
        faultMs: 360_000,
        convergeTimeoutMs: 90_000,
        deadlineMs: 660_000,
        notifyIntervalMs: 50,
        notifyBatchMax: 5,
        processGapMs: [3_000, 8_000],
        infraGapMs: [1_000, 4_000],
      };
  const faultsS = num("faults-s");
  if (faultsS !== undefined) {
    plan.deadlineMs += faultsS * 1_000 - plan.faultMs;
    plan.faultMs = faultsS * 1_000;
  }
  plan.identities = num("identities") ?? plan.identities;
  plan.workers = Math.max(2, num("workers") ?? plan.workers);
  const seed = num("seed") ?? Math.floor(Math.random() * 2 ** 31);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").replace(/-\d{3}Z$/, "Z");
  const json = value("json") ?? (quick ? null : path.join(ROOT, "bench", "results", `chaos-${stamp}.json`));
  return { plan, seed, json, keepLogs: flag("keep-logs"), strict: flag("strict"), pgParams: value("pg-params") ?? "" };
}

/** The buckets of worker slot `slot`: every namespace; in a mixed one, even slots use NATS. */
function bucketsOf(plan: Plan, slot: number): WorkerBucket[] {
  return plan.namespaces.map((n) => ({ namespace: n.name, nats: n.dispatch === "nats" || (n.dispatch === "mixed" && slot % 2 === 0) }));
}

const log = (line: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

async function main(): Promise<number> {
  const { plan, seed, json, keepLogs, strict, pgParams } = parseArgs(process.argv.slice(2));
  // One generator per consumer, so that the fault sequence replays from the seed whatever the
  // load does (the order of the faults, not their timing, which depends on the machine).
  const faultRandom = createRandom(seed);
  const loadRandom = createRandom((seed ^ 0x5bd1e995) >>> 0);
  const started = Date.now();
  const nsNames = plan.namespaces.map((n) => n.name);
  log(`${plan.mode} run, seed ${seed}: ${plan.identities} identities × ${plan.namespaces.map((n) => `${n.name} (${n.dispatch})`).join(", ")}; ${plan.workers} worker processes; ${plan.faultMs / 1000} s of faults`);

  let pg: PostgresServer | undefined;
  let nats: NatsServer | undefined;
  let fleet: Fleet | undefined;
  let notifier: Notifier | undefined;
  let injector: FaultInjector | undefined;
  let admin: postgres.Sql | undefined;
  let tokensProbe: TokensProbe | undefined;
  let violations = 0;
  let driverErrors = 0;
  const workDir = await mkdtemp(path.join(tmpdir(), "dmm-chaos-run-"));
  const logDir = path.join(workDir, "logs");
  await mkdir(logDir);

  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      const steps: [string, () => Promise<unknown>][] = [
        ["tokens probe", async () => tokensProbe?.stop()],
        ["workers", async () => fleet?.dispose()],
        ["fault injector", async () => injector?.close()],
        ["notifier", async () => notifier?.close()],
        ["admin connection", async () => admin?.end({ timeout: 1 })],
        ["nats-server", async () => nats?.dispose()],
        ["postgres", async () => pg?.dispose()],
      ];
      for (const [name, step] of steps) {
        await withTimeout(step(), 20_000).catch((err: unknown) => log(`cleanup of ${name} failed: ${(err as Error).message}`));
      }
      if (violations > 0 || keepLogs) {
        const kept = path.join(tmpdir(), `dmm-chaos-logs-${seed}-${Date.now()}`);
        await cp(logDir, kept, { recursive: true }).catch(() => {});
        log(`worker logs kept in ${kept}`);
      }
      await rm(workDir, { recursive: true, force: true });
    })());

  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    log(`${signal}: cleaning up`);
    const hard = setTimeout(() => process.exit(130), 30_000);
    hard.unref();
    void cleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  // postgres.js 3.4.9 throws from a timer when a statement is written to a connection whose
  // backend was just terminated (chaos/repro/terminated-transaction.ts). The notifier's
  // transactions hit it under pg_terminate_backend; the run survives it (the transaction has
  // rejected already, its notifies count as unknown) and counts it. (The driver's other known
  // crash, an unhandled rejection of its array-type fetch on a new connection, cannot happen
  // here: the run's own clients set fetch_types: false.) Anything else uncaught ends the run,
  // with cleanup.
  process.on("uncaughtException", (err) => {
    if (err instanceof TypeError && /postgres[\\/]src[\\/]connection\.js/.test(err.stack ?? "")) {
      driverErrors++;
      return;
    }
    log(`uncaught exception: ${err.stack ?? String(err)}`);
    const hard = setTimeout(() => process.exit(2), 30_000);
    hard.unref();
    void cleanup().finally(() => process.exit(2));
  });
  const watchdog = setTimeout(() => {
    log(`watchdog: the run exceeded ${plan.deadlineMs / 1000} s; cleaning up`);
    const hard = setTimeout(() => process.exit(2), 30_000);
    hard.unref();
    void cleanup().finally(() => process.exit(2));
  }, plan.deadlineMs);
  watchdog.unref();

  try {
    // Servers: private, on free ports, durable settings (fsync on) since the run tests durability.
    [pg, nats] = await Promise.all([startPostgresServer({ settings: { max_connections: 300 } }), startNatsServer()]);
    log(`private Postgres on ${pg.port} (init ${pg.initMs} ms), nats-server on ${nats.port}`);
    await migrate(pg.url);
    admin = postgres(pg.url, { max: 2, onnotice: () => {}, connect_timeout: 5, fetch_types: false, connection: { application_name: "chaos:admin" } });
    await admin.unsafe(CHAOS_SCHEMA_SQL);

    notifier = await Notifier.open({
      url: pg.url,
      namespaces: nsNames,
      identities: plan.identities,
      intervalMs: plan.notifyIntervalMs,
      batchMax: plan.notifyBatchMax,
      timeoutMs: 10_000,
      random: loadRandom,
    });
    await notifier.seed();

    const natsSlots: number[] = [];
    fleet = await Fleet.create({
      slots: plan.workers,
      bucketsOf: (i) => {
        const b = bucketsOf(plan, i);
        if (b.some((x) => x.nats)) natsSlots.push(i);
        return b;
      },
      postgresPort: pg.port,
      natsPort: nats.port,
      postgresUrl: pg.url,
      postgresParams: pgParams,
      timings: TIMINGS,
      profile: PROFILE,
      logDir,
      onMessage: (slot, msg) => injector?.onWorkerMessage(slot, msg),
    });
    for (const s of fleet.slots) fleet.start(s.index);
    if (!(await fleet.allReady(45_000))) throw new Error("The worker processes did not all report ready within 45 s; see their logs.");
    log(`${plan.workers} workers ready after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // Warm-up: the seed notifies converge before the load and the faults start, so that the
    // figures measure dmm under faults, not the workers' start-up.
    const warm = Date.now();
    try {
      await waitFor(
        async () => {
          const c = await withTimeout(convergence(admin!, nsNames), 5_000);
          return nsNames.every((ns) => c[ns]!.done === plan.identities);
        },
        { description: "the seed notifies to converge", timeoutMs: 60_000, intervalMs: 250 },
      );
    } catch (err) {
      throw new Error(`Warm-up failed: ${(err as Error).message}`);
    }
    log(`seed converged in ${((Date.now() - warm) / 1000).toFixed(1)} s; starting the load and the faults`);

    injector = new FaultInjector({
      pg,
      nats,
      fleet,
      random: faultRandom,
      natsSlots,
      processBag: PROCESS_BAG,
      infraBag: INFRA_BAG,
      processGapMs: plan.processGapMs,
      infraGapMs: plan.infraGapMs,
      onFault: (f) => log(`fault ${f.kind}${f.slots ? ` [worker ${f.slots.join(",")}]` : ""} at ${(f.at / 1000).toFixed(1)} s, ${f.durationMs} ms${f.detail ? `: ${f.detail}` : ""}`),
    });
    tokensProbe = new TokensProbe(nats.url, path.join(logDir, "nats.jsonl"));
    tokensProbe.start();
    notifier.start();
    const faultsStarted = Date.now();
    const status = setInterval(() => {
      const c = notifier!.counts();
      const alive = fleet!.slots.filter((s) => fleet!.alive(s.index)).length;
      log(`status: ${c.committed} notifies committed, ${c.unknown} unknown; ${alive}/${plan.workers} workers alive; ${injector!.records.length} faults`);
    }, 15_000);
    // How many workers were ready over time: the context of the latency figures (a worker
    // process restarted after a kill or a crash needs seconds to load before it works again).
    const readyTime = new Array<number>(plan.workers + 1).fill(0);
    let lastSample = Date.now();
    const sampler = setInterval(() => {
      const now = Date.now();
      readyTime[fleet!.readyCount()]! += now - lastSample;
      lastSample = now;
    }, 100);
    // Keep within the deadline whatever the start-up cost on this machine: the faults end in
    // time to leave the convergence wait, the checks and the cleanup their share.
    const reserveMs = plan.convergeTimeoutMs + 20_000;
    const faultBudgetMs = Math.max(20_000, Math.min(plan.faultMs, started + plan.deadlineMs - reserveMs - Date.now()));
    if (faultBudgetMs < plan.faultMs) log(`start-up took long: ${(faultBudgetMs / 1000).toFixed(0)} s of faults instead of ${plan.faultMs / 1000} s, to stay within ${plan.deadlineMs / 1000} s`);
    await injector.run(faultBudgetMs);
    clearInterval(sampler);
    clearInterval(status);
    const faultsMs = Date.now() - faultsStarted;

    // Stop the load, heal, and wait until every notify transaction has settled: one that timed
    // out (counted unknown) may still be waiting, e.g. on a row lock of a worker transaction
    // behind a half-open link, and commit later. Convergence means nothing before that.
    await notifier.stop();
    const inflightAtStop = notifier.inflight;
    await injector.healAll();
    const healedAt = injector.lastHealAt;
    let notifiesTerminated = 0;
    if ((await notifier.settle(15_000)) > 0) {
      // Still running 15 s after the heal: end them (each then commits or rolls back for good).
      notifiesTerminated = notifier.inflight;
      log(`${notifiesTerminated} notify transactions still running 15 s after the heal; terminating the notifier's backends`);
      await withTimeout(admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'chaos:notifier'`, 5_000).catch((err: unknown) =>
        log(`terminating the notifier's backends failed: ${(err as Error).message}`),
      );
      const left = await notifier.settle(10_000);
      if (left > 0) throw new Error(`${left} notify transactions did not settle even after their backends were terminated.`);
    }
    log(
      `faults over after ${(faultsMs / 1000).toFixed(1)} s; everything healed, notifier stopped` +
        `${inflightAtStop > 0 ? ` (${inflightAtStop} notify transactions were still running; settled ${Date.now() - healedAt} ms after the heal)` : ""}; waiting for convergence`,
    );
    // Converged means: in one snapshot, every identity of every namespace run at its last
    // generation, lease free, not parked, cache applied == value (checks.ts, CONVERGED). The
    // per-namespace times are when each namespace was first seen converged, for the figures.
    let convergeMs: number | null = null;
    const convergeByNamespace: Record<string, number | null> = Object.fromEntries(nsNames.map((ns) => [ns, null]));
    let workersBackMs: number | null = null;
    let last: Record<string, { done: number; total: number }> = {};
    /** The last identities to converge, with their rows as last seen (kept with the logs). */
    let lastToConverge: UnconvergedMatter[] = [];
    /** Identities not converged when the probe gave up (empty when it converged). */
    let unconverged: UnconvergedMatter[] = [];
    // Counted from the heal, so the notify settling above eats into it: the run keeps its deadline.
    const convergeDeadline = healedAt + plan.convergeTimeoutMs;
    for (;;) {
      // Workers that die now (a fault's late effect) are restarted: healing means all of them run.
      for (const s of fleet.slots) if (!fleet.alive(s.index) && !s.restartTimer) fleet.start(s.index);
      if (workersBackMs === null && fleet.slots.every((s) => fleet!.alive(s.index) && !s.starting)) workersBackMs = Date.now() - healedAt;
      try {
        last = await withTimeout(convergence(admin, nsNames), 5_000);
        const done = (ns: string) => last[ns]!.done === plan.identities && last[ns]!.total === plan.identities;
        for (const ns of nsNames) if (convergeByNamespace[ns] === null && done(ns)) convergeByNamespace[ns] = Date.now() - healedAt;
        if (nsNames.every(done)) {
          convergeMs = Date.now() - healedAt;
          break;
        }
        if (nsNames.reduce((n, ns) => n + last[ns]!.total - last[ns]!.done, 0) <= 5) {
          lastToConverge = await withTimeout(unconvergedMatters(admin, nsNames, 5), 5_000);
        }
        // Slow to converge: what every backend is doing (lock waits, idle in transaction), kept
        // with the logs to tell a stuck run from a lost wakeup.
        if (Date.now() - healedAt > 3_000) {
          const activity = await withTimeout(
            admin`select clock_timestamp()::text as at, pid, application_name as app, state, wait_event_type as wait_type, wait_event as wait,
                         xact_start::text as xact_start, query_start::text as query_start, left(query, 160) as query
                  from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and state is distinct from 'idle'`,
            5_000,
          );
          await appendFile(path.join(logDir, "activity.jsonl"), `${JSON.stringify({ at: new Date().toISOString(), backends: activity })}\n`);
        }
      } catch {
        /* the probe itself may hit a connection killed by the last fault; try again */
      }
      if (Date.now() >= convergeDeadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    if (convergeMs === null) {
      unconverged = await withTimeout(unconvergedMatters(admin, nsNames, 20), 10_000).catch((err: unknown) => {
        log(`reading the unconverged matters failed: ${(err as Error).message}`);
        return [];
      });
      log(`NOT converged within ${plan.convergeTimeoutMs / 1000} s: ${nsNames.map((ns) => `${ns} ${last[ns]?.done ?? "?"}/${plan.identities}`).join(", ")}; first ${unconverged.length} not converged:`);
      for (const m of unconverged) log(`  ${JSON.stringify(m)}`);
    } else {
      log(
        `converged ${convergeMs} ms after the last fault was healed (${nsNames.map((ns) => `${ns} ${convergeByNamespace[ns]} ms`).join(", ")}; all workers ready after ${workersBackMs ?? "?"} ms)`,
      );
    }

    tokensProbe.stop();
    await fleet.stop(10_000);
    // The outbox rows relay kills left behind: relayed again (a duplicate msgID) and deleted by now?
    const killedRows = injector.relayKillRows.map((r) => r.rowId);
    const [left] = killedRows.length
      ? await admin<{ n: number }[]>`select count(*)::int as n from dmm.dmm_outbox where id in ${admin(killedRows)}`
      : [{ n: 0 }];
    const { checks, figures } = await runChecks(admin, nsNames, plan.identities, notifier.records);
    if (notifier.anomalies.length > 0) checks.push({ name: "notify-readback", violations: notifier.anomalies.length, samples: notifier.anomalies.slice(0, 5) });
    violations = checks.reduce((s, c) => s + c.violations, 0);
    // The checks must be able to fail: plant one violation of each kind, rolled back after.
    const blindChecks = await selfTest(admin, nsNames, plan.identities, notifier.records);
    if (blindChecks.length > 0) log(`check self-test: these checks did not see a planted violation: ${blindChecks.join(", ")}`);
    if (keepLogs || violations > 0) {
      // The record around the slowest notifies, for whoever reads the kept logs.
      const detail = [];
      for (const n of figures.slowestNotifies.slice(0, 3)) {
        detail.push({
          notify: n,
          ledger: await admin`select * from chaos.ledger where namespace = ${n.namespace} and identity = ${n.identity} order by started_at`,
          notifies: await admin`select * from chaos.notify_log where namespace = ${n.namespace} and identity = ${n.identity} order by generation`,
          saves: await admin`select * from chaos.cache_writes where namespace = ${n.namespace} and identity = ${n.identity} order by id`,
        });
      }
      await writeFile(path.join(logDir, "slowest-notifies.json"), JSON.stringify(detail, null, 1));
      // The whole record of every identity a violation names, to find out what happened.
      const named = new Map<string, { namespace: string; identity: string }>();
      for (const c of checks) {
        for (const sample of c.samples as { namespace?: unknown; identity?: unknown }[]) {
          if (typeof sample?.namespace === "string" && typeof sample.identity === "string") named.set(`${sample.namespace}/${sample.identity}`, { namespace: sample.namespace, identity: sample.identity });
        }
      }
      const records = [];
      for (const { namespace, identity } of [...named.values()].slice(0, 20)) {
        records.push({
          namespace,
          identity,
          matter: await admin`select * from dmm.dmm_matter where namespace = ${namespace} and identity = ${identity}`,
          ledger: await admin`select * from chaos.ledger where namespace = ${namespace} and identity = ${identity} order by started_at`,
          notifies: await admin`select * from chaos.notify_log where namespace = ${namespace} and identity = ${identity} order by generation`,
          saves: await admin`select * from chaos.cache_writes where namespace = ${namespace} and identity = ${identity} order by id`,
        });
      }
      if (records.length > 0) await writeFile(path.join(logDir, "violations.json"), JSON.stringify({ checks: checks.filter((c) => c.violations > 0), records }, null, 1));
      await writeFile(path.join(logDir, "last-to-converge.json"), JSON.stringify({ healedAt: new Date(healedAt).toISOString(), lastToConverge }, null, 1));
      // The whole record, one row a line, for questions the summaries above do not answer.
      const dump = async (file: string, rows: readonly unknown[]) => writeFile(path.join(logDir, file), rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
      await dump("ledger.jsonl", await admin`select * from chaos.ledger order by namespace, identity, started_at`);
      await dump("matters.jsonl", await admin`select namespace, identity, generation, observed_generation, lease_owner, lease_epoch, lease_until, due_at, dispatched_at, attempts, last_error, updated_at from dmm.dmm_matter order by namespace, identity`);
    }
    const crashes = fleet.unexpectedExits;

    const faultCounts = Object.fromEntries(FAULT_KINDS.map((k) => [k, injector!.records.filter((r) => r.kind === k).length])) as Record<FaultKind, number>;
    const counts = notifier.counts();
    const report: ChaosReport = {
      mode: plan.mode,
      seed,
      startedAt: new Date(started).toISOString(),
      durationS: Math.round((Date.now() - started) / 100) / 10,
      machine: { cpus: cpus().length, memoryGb: Math.round(totalmem() / 2 ** 30), node: process.version },
      setup: {
        identitiesPerNamespace: plan.identities,
        namespaces: plan.namespaces,
        workers: plan.workers,
        workerIncarnations: fleet.slots.reduce((s, x) => s + x.incarnation, 0),
        timings: TIMINGS,
        workerPostgresParams: pgParams,
        faultPeriodS: Math.round(faultsMs / 100) / 10,
      },
      readyWorkersShare: Object.fromEntries(readyTime.map((ms, n) => [String(n), Math.round((1000 * ms) / Math.max(1, faultsMs)) / 1000])),
      notifies: {
        committed: counts.committed,
        unknown: counts.unknown,
        unknownCommitted: figures.unknownCommitted,
        unknownRolledBack: figures.unknownRolledBack,
        inflightAtStop,
        terminatedAtEnd: notifiesTerminated,
      },
      runs: {
        started: figures.ledgerRuns,
        completed: figures.completedRuns,
        cacheSaves: figures.cacheSaves,
        byReason: figures.runsByReason,
        workerCounters: fleet.totals(),
      },
      faults: faultCounts,
      faultsTotal: injector.records.length,
      faultMisses: injector.misses,
      relayKillRows: {
        total: injector.relayKillRows.length,
        leftBehind: injector.relayKillRows.filter((r) => r.presentAfterKill === true).length,
        stillThereAtEnd: left!.n,
      },
      tokenPeaks: Object.fromEntries(tokensProbe.peak),
      convergeAfterLastFaultMs: convergeMs,
      convergeByNamespaceMs: convergeByNamespace,
      unconverged,
      workersReadyAfterHealMs: workersBackMs,
      notifyToRunMs: figures.notifyToRunMs,
      slowestNotifies: figures.slowestNotifies,
      workerLog: Object.fromEntries([...fleet.logCounts.entries()].sort((a, b) => b[1] - a[1])),
      checks,
      violations,
      crashes: { workers: crashes, runDriverErrors: driverErrors },
      blindChecks,
      faultLog: injector.records,
    };
    printReport(report);
    if (json) {
      await mkdir(path.dirname(json), { recursive: true });
      await writeFile(json, `${JSON.stringify(report, null, 2)}\n`);
      log(`figures written to ${path.relative(process.cwd(), json)}`);
    }
    if (blindChecks.length > 0) return 2;
    if (strict && crashes.length > 0) {
      log(`--strict: ${crashes.length} worker processes crashed on their own`);
      return 1;
    }
    return violations === 0 ? 0 : 1;
  } catch (err) {
    if (interrupted) return 130;
    log(`the run failed: ${(err as Error).stack ?? String(err)}`);
    return 2;
  } finally {
    clearTimeout(watchdog);
    await cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`the run failed: ${(err as Error).stack ?? String(err)}`);
    process.exit(2);
  },
);
