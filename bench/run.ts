/**
 * Benchmark entry point: `npx tsx bench/run.ts [--quick] [--only a,b] [--scenario x,y]`.
 *
 * Runs every scenario for every available system in one invocation, interleaved (for each
 * scenario variant, every system is measured before the next variant starts; repeats rotate
 * the order), each measurement on a fresh database cloned from the system's installed
 * template. Writes `bench/results/<UTC timestamp>.json` and regenerates `bench/RESULTS.md`
 * with ratios against graphile-worker from the same run. Exits non-zero if any measurement
 * failed. Worker children are always killed and every database it created is dropped, also
 * on Ctrl-C.
 */
import { writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Databases, NATS_URL, urlForDatabase } from "./lib/db.js";
import { machineInfo, postgresSettings } from "./lib/machine.js";
import { renderMarkdown, writeJson, type BenchReport, type Mode, type Result } from "./lib/report.js";
import { median } from "./lib/stats.js";
import type { System } from "./lib/system.js";
import { Scope, errorText, log, warn, withTimeout } from "./lib/util.js";
import { killAllWorkers } from "./lib/workers.js";
import { sizesFor, type Env, type Measured, type Variant } from "./scenarios/common.js";
import { SCENARIOS } from "./scenarios/index.js";
import { ALL_SYSTEM_NAMES, loadSystems } from "./systems/index.js";

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const INSTALL_TIMEOUT_MS = 120_000;

/** A bad command line: printed with the usage text, without a stack trace. */
class UsageError extends Error {
  override name = "UsageError";
}

const USAGE = `Usage: npx tsx bench/run.ts [options]

  --quick              small sizes, one repeat (under 3 minutes)
  --only a,b           systems to run (${ALL_SYSTEM_NAMES.join(", ")})
  --scenario x,y       scenarios to run (${SCENARIOS.map((s) => s.name).join(", ")})
  --jobs N             override the item count of throughput, scale and cost (development)
  --no-save            print results only; write neither bench/results/*.json nor RESULTS.md
  --help               this text`;

function parseCli() {
  const config = {
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string" },
      scenario: { type: "string" },
      jobs: { type: "string" },
      "no-save": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  } as const;
  let values: ReturnType<typeof parseArgs<typeof config>>["values"];
  try {
    values = parseArgs(config).values;
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const list = (v: string | undefined) => v?.split(",").map((s) => s.trim()).filter(Boolean);
  const only = list(values.only) ?? [...ALL_SYSTEM_NAMES];
  for (const name of only) {
    if (!ALL_SYSTEM_NAMES.includes(name)) throw new UsageError(`Unknown system "${name}"; known: ${ALL_SYSTEM_NAMES.join(", ")}.`);
  }
  const scenarioNames = list(values.scenario) ?? SCENARIOS.map((s) => s.name);
  for (const name of scenarioNames) {
    if (!SCENARIOS.some((s) => s.name === name)) {
      throw new UsageError(`Unknown scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}.`);
    }
  }
  let jobs: number | undefined;
  if (values.jobs !== undefined) {
    jobs = Number(values.jobs);
    if (!Number.isInteger(jobs) || jobs < 100) throw new UsageError(`--jobs must be an integer ≥ 100, got "${values.jobs}".`);
  }
  return {
    mode: (values.quick ? "quick" : "full") as Mode,
    only,
    scenarios: SCENARIOS.filter((s) => scenarioNames.includes(s.name)),
    jobs,
    save: !values["no-save"],
  };
}

/** Runs one measurement under its timeout; always closes its scope (workers, producer, database). */
async function measureOnce(system: System, env: Env, scenario: string, variant: Variant): Promise<Measured | Error> {
  const scope = Scope.root();
  const label = `${system.name} ${scenario}/${variant.name}`;
  const loadBefore = os.loadavg()[0]!;
  try {
    const measured = await withTimeout(variant.measure(system, env, scope), variant.timeoutMs, label, () => `it was ${scope.step}`);
    // The machine may be shared: a load average far above the benchmark's own processes means noise.
    const loadavg = [Math.round(loadBefore * 100) / 100, Math.round(os.loadavg()[0]! * 100) / 100];
    return { ...measured, detail: { ...measured.detail, loadavg_1m_before_after: loadavg } };
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    warn(`${label} FAILED: ${error.message}`);
    return error;
  } finally {
    await scope.close();
  }
}

/** Median of each metric over repeats; the detail keeps every repeat. */
function aggregate(runs: Measured[]): Measured {
  if (runs.length === 1) return runs[0]!;
  const metrics: Record<string, number> = {};
  for (const key of Object.keys(runs[0]!.metrics)) metrics[key] = median(runs.map((r) => r.metrics[key]!));
  return {
    metrics,
    detail: {
      aggregate: `median of ${runs.length} repeats`,
      values: Object.fromEntries(Object.keys(metrics).map((k) => [k, runs.map((r) => r.metrics[k])])),
      repeats: runs.map((r) => r.detail),
    },
  };
}

function shortMetrics(metrics: Record<string, number>): string {
  return Object.entries(metrics)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

async function main(): Promise<number> {
  const cli = parseCli();
  const startedAt = new Date();
  const { systems, skipped } = await loadSystems(cli.only);
  for (const s of skipped) log(`skipping ${s.name}: ${s.reason}`);
  if (systems.length === 0) {
    warn("no system to benchmark");
    return 1;
  }

  const dbs = new Databases();
  let cleaning = false;
  const emergency = (code: number) => {
    if (cleaning) return;
    cleaning = true;
    killAllWorkers();
    warn("interrupted: killing workers and dropping the databases created so far");
    void dbs
      .dropAll()
      .catch(() => {})
      .finally(() => process.exit(code));
  };
  process.on("SIGINT", () => emergency(130));
  process.on("SIGTERM", () => emergency(143));
  process.on("exit", killAllWorkers);

  try {
    const env: Env = {
      mode: cli.mode,
      sizes: sizesFor(cli.mode, cli.jobs),
      dbs,
      templates: new Map(),
      e2eRates: new Map(),
    };
    const [machine, settings, leftovers] = await Promise.all([
      machineInfo(dbs.admin),
      postgresSettings(dbs.admin),
      dbs.leftovers(),
    ]);
    const notes: string[] = [];
    if (leftovers.length) {
      warn(`databases from earlier runs exist (not touched): ${leftovers.join(", ")}`);
    }
    if (cli.jobs !== undefined) notes.push(`Item counts overridden with --jobs ${cli.jobs} (development run).`);
    log(`${cli.mode} run: ${systems.map((s) => s.name).join(", ")}; scenarios: ${cli.scenarios.map((s) => s.name).join(", ")}`);

    // One installed template database per system; measurements clone it.
    const installErrors = new Map<string, string>();
    for (const system of systems) {
      try {
        const database = await dbs.create(system.name, "template");
        env.templates.set(system.name, database);
        const target = { databaseUrl: urlForDatabase(database), natsUrl: NATS_URL, namespace: `bench_${database.slice(-8)}`, dedupe: false };
        try {
          await withTimeout(system.install(target), INSTALL_TIMEOUT_MS, `${system.name} install`);
        } finally {
          await system.dispose?.(target);
        }
      } catch (err) {
        installErrors.set(system.name, `install failed: ${errorText(err)}`);
        warn(`${system.name} install FAILED: ${errorText(err)}`);
      }
    }

    const results: Result[] = [];
    for (const scenario of cli.scenarios) {
      const scenarioResults: Result[] = [];
      for (const variant of scenario.variants(env)) {
        const runs = new Map<string, Measured[]>();
        const errors = new Map<string, string>(installErrors);
        for (let repeat = 0; repeat < variant.repeats; repeat++) {
          const shift = repeat % systems.length;
          const order = [...systems.slice(shift), ...systems.slice(0, shift)];
          for (const system of order) {
            if (errors.has(system.name)) continue;
            const t0 = performance.now();
            const outcome = await measureOnce(system, env, scenario.name, variant);
            const secs = ((performance.now() - t0) / 1000).toFixed(1);
            if (outcome instanceof Error) {
              errors.set(system.name, outcome.message);
              continue;
            }
            log(`${scenario.name}/${variant.name} ${system.name}: ${shortMetrics(outcome.metrics)} (${secs} s)`);
            runs.set(system.name, [...(runs.get(system.name) ?? []), outcome]);
          }
        }
        for (const system of systems) {
          const error = errors.get(system.name);
          const base = { system: system.name, scenario: scenario.name, variant: variant.name };
          if (error !== undefined) {
            scenarioResults.push({ ...base, metrics: {}, error });
            continue;
          }
          const measured = aggregate(runs.get(system.name)!);
          scenarioResults.push({ ...base, metrics: measured.metrics, ...(measured.detail ? { detail: measured.detail } : {}) });
          if (scenario.name === "throughput" && variant.name === "1proc" && measured.metrics.e2e_per_s) {
            env.e2eRates.set(system.name, measured.metrics.e2e_per_s);
          }
        }
      }
      results.push(...scenarioResults, ...(scenario.derive?.(scenarioResults) ?? []));
    }

    const loads = results
      .flatMap((r) => [r.detail, ...((r.detail?.repeats as Array<Record<string, unknown>> | undefined) ?? [])])
      .map((d) => (d?.loadavg_1m_before_after as number[] | undefined)?.[0])
      .filter((v): v is number => typeof v === "number");
    if (loads.length) {
      notes.push(
        `1-minute load average when measurements started: ${Math.min(...loads)}–${Math.max(...loads)} on ${machine.cpus} CPUs ` +
          "(the benchmark's own processes account for about 2–3 of it right after a busy measurement; much more " +
          "means other work shared the machine and the numbers are noisier).",
      );
    }
    const report: BenchReport = {
      machine,
      date: startedAt.toISOString(),
      mode: cli.mode,
      results,
      command: `npx tsx bench/run.ts ${process.argv.slice(2).join(" ")}`.trim(),
      postgresSettings: settings,
      systems: systems.map((s) => ({ name: s.name, notes: s.notes })),
      skipped: skipped.map(({ name, reason }) => ({ name, reason })),
      sizes: { ...env.sizes },
      notes,
    };
    const markdown = renderMarkdown(report);
    if (cli.save) {
      const file = writeJson(report, path.join(BENCH_DIR, "results"));
      writeFileSync(path.join(BENCH_DIR, "RESULTS.md"), markdown);
      log(`wrote ${path.relative(process.cwd(), file)} and bench/RESULTS.md`);
    }
    // The table, and the details behind it (start-up, drain CPU, loads…): what a development run needs.
    const lines = markdown.split("\n");
    const details: string[] = [];
    const from = lines.indexOf("## Details behind the numbers");
    if (from >= 0) {
      for (const line of lines.slice(from + 1)) {
        if (line.startsWith("## ")) break;
        if (line.startsWith("- ")) details.push(line);
      }
    }
    console.log([...lines.filter((line) => line.startsWith("|")), ...details].join("\n"));
    const failed = results.some((r) => r.error) || skipped.some((s) => s.failed);
    if (failed) warn("some measurements failed; see the Failures section of RESULTS.md");
    return failed ? 1 : 0;
  } finally {
    killAllWorkers();
    await dbs.dropAll();
    await dbs.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    killAllWorkers();
    if (err instanceof UsageError) console.error(`${err.message}\n\n${USAGE}`);
    else console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
