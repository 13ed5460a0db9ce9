/**
 * The figures of a chaos run: the JSON shape written to bench/results/chaos-<timestamp>.json and
 * the table printed at the end of every run.
 */
import type { CheckResult, UnconvergedMatter } from "./checks.js";
import type { FaultKind, FaultMiss, FaultRecord } from "./faults.js";
import type { WorkerTimings } from "./model.js";
import type { UnexpectedExit } from "./fleet.js";

/** Everything a chaos run reports. */
export interface ChaosReport {
  mode: "quick" | "full";
  seed: number;
  startedAt: string;
  durationS: number;
  machine: { cpus: number; memoryGb: number; node: string };
  setup: {
    identitiesPerNamespace: number;
    namespaces: { name: string; dispatch: string }[];
    workers: number;
    /** Worker processes started over the run (restarts after kills included). */
    workerIncarnations: number;
    timings: WorkerTimings;
    /** postgres.js URL parameters the workers used (empty: dmm's defaults). */
    workerPostgresParams: string;
    faultPeriodS: number;
  };
  /** Share of the fault period during which 0, 1, 2, … worker processes were ready. */
  readyWorkersShare: Record<string, number>;
  notifies: {
    /** The commit returned. */
    committed: number;
    /** The transaction failed or timed out: outcome unknown to the app. */
    unknown: number;
    /** …of which Postgres shows it committed after all / rolled back. */
    unknownCommitted: number;
    unknownRolledBack: number;
    /** Notify transactions still running (timed out, not settled) when the notifier stopped. */
    inflightAtStop: number;
    /** …of which still running 15 s after the heal, so the run terminated their backends. */
    terminatedAtEnd: number;
  };
  runs: {
    /** Runs that recorded their (fenced) start. */
    started: number;
    /** Runs that recorded their (fenced) end. */
    completed: number;
    /** Committed cache saves. */
    cacheSaves: number;
    byReason: Record<string, number>;
    /** dmm's own counters summed over worker processes (a killed process's last report). */
    workerCounters: Record<string, Record<string, number>>;
  };
  faults: Record<FaultKind, number>;
  faultsTotal: number;
  faultMisses: FaultMiss[];
  /** Relay kills, and how many left their outbox row behind (the kill landed between PubAck and delete). */
  relayKillRows: { total: number; leftBehind: number; stillThereAtEnd: number };
  /** The most tokens a stream held at once, per stream (sampled every 2 s). */
  tokenPeaks: Record<string, number>;
  /** From the moment everything was healed (and notifies stopped) until every identity converged. */
  convergeAfterLastFaultMs: number | null;
  /** The same, per namespace (null: did not converge). */
  convergeByNamespaceMs: Record<string, number | null>;
  /** When the probe gave up: the identities not converged, with their dmm rows (up to 20). */
  unconverged: UnconvergedMatter[];
  /** From the heal until every worker process (restarted ones too) reported ready. */
  workersReadyAfterHealMs: number | null;
  /** Notify commit → end of the first completed run that saw it. */
  notifyToRunMs: { p50: number; p99: number; max: number } | null;
  slowestNotifies: { namespace: string; identity: string; generation: string; at: string; ms: number }[];
  /** Worker log lines by message, over every worker process. */
  workerLog: Record<string, number>;
  checks: CheckResult[];
  violations: number;
  /**
   * Worker processes that exited without being killed by the run (uncaught errors), and
   * driver errors the run's own process survived. Not invariant violations, but bugs.
   */
  crashes: { workers: UnexpectedExit[]; runDriverErrors: number };
  /** Checks that did not fire on a planted violation (the self-test); must be empty. */
  blindChecks: string[];
  faultLog: FaultRecord[];
}

/** A one-line summary of why a worker process crashed, from its last output lines. */
export function crashSignature(c: UnexpectedExit): string {
  const text = c.tail.join("\n");
  if (text.includes("Immediate.nextWrite")) return "postgres.js TypeError in nextWrite (write to a closed connection)";
  const unhandled = /"msg":"chaos:unhandled-rejection".*?"err":"([^\\"]{0,120})/.exec(text);
  if (unhandled) return `unhandled rejection: ${unhandled[1]}`;
  const work = /"msg":"chaos:work:error".*?"err":"([^\\"]{0,160})/.exec(text);
  if (work) return `stream.work() rejected: ${work[1]}`;
  const error = c.tail.find((l) => /Error/.test(l));
  return `exit code ${c.code} signal ${c.signal}${error ? `: ${error.trim().slice(0, 160)}` : ""}`;
}

function table(rows: [string, string | number][]): string {
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join("\n");
}

/** Prints the figures as a table, then the JSON, on stdout. */
export function printReport(r: ChaosReport): void {
  const out: string[] = [];
  out.push("");
  out.push(`dmm chaos run (${r.mode}), seed ${r.seed}, ${r.durationS} s on ${r.machine.cpus} cores`);
  out.push(
    `  ${r.setup.identitiesPerNamespace} identities × ${r.setup.namespaces.map((n) => `${n.name} (${n.dispatch})`).join(", ")}; ${r.setup.workers} worker processes (${r.setup.workerIncarnations} started in all); ${r.setup.faultPeriodS} s of faults`,
  );
  out.push("");
  out.push("figures");
  out.push(
    table([
      ["notifies committed", r.notifies.committed],
      ["notifies with unknown outcome", `${r.notifies.unknown} (${r.notifies.unknownCommitted} committed, ${r.notifies.unknownRolledBack} rolled back)`],
      ["runs started / completed", `${r.runs.started} / ${r.runs.completed}`],
      ["runs by reason", Object.entries(r.runs.byReason).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["cache saves committed", r.runs.cacheSaves],
      ["faults injected", r.faultsTotal],
      ["relay kills that left their outbox row", `${r.relayKillRows.leftBehind} of ${r.relayKillRows.total} (${r.relayKillRows.stillThereAtEnd} still there at the end)`],
      ["tokens waiting in a stream, peak", Object.entries(r.tokenPeaks).map(([k, v]) => `${k} ${v}`).join(", ") || "-"],
      ["notify transactions running at the stop", `${r.notifies.inflightAtStop} (${r.notifies.terminatedAtEnd} terminated after 15 s)`],
      ["time to converge after the last fault", r.convergeAfterLastFaultMs === null ? `DID NOT CONVERGE (${r.unconverged.length} identities listed in "unconverged")` : `${(r.convergeAfterLastFaultMs / 1000).toFixed(2)} s`],
      ["  per namespace", Object.entries(r.convergeByNamespaceMs).map(([k, v]) => `${k} ${v === null ? "-" : `${(v / 1000).toFixed(2)} s`}`).join(", ")],
      [
        "  all workers ready again after",
        r.workersReadyAfterHealMs !== null ? `${(r.workersReadyAfterHealMs / 1000).toFixed(2)} s` : r.convergeAfterLastFaultMs !== null ? "(converged before every worker was back)" : "-",
      ],
      ["workers ready during the faults", Object.entries(r.readyWorkersShare).map(([n, share]) => `${n}: ${(share * 100).toFixed(0)} %`).join(", ")],
      ["notify → run seen (p50 / p99 / max)", r.notifyToRunMs ? `${r.notifyToRunMs.p50} / ${r.notifyToRunMs.p99} / ${r.notifyToRunMs.max} ms` : "-"],
    ]),
  );
  out.push("");
  out.push("faults by kind");
  out.push(table(Object.entries(r.faults)));
  if (r.faultMisses.length > 0) out.push(`  (${r.faultMisses.length} attempts did not land: ${[...new Set(r.faultMisses.map((m) => `${m.kind}: ${m.reason}`))].join("; ")})`);
  out.push("");
  out.push("violations (each must be 0)");
  out.push(table(r.checks.map((c) => [c.name, c.violations])));
  for (const c of r.checks) {
    if (c.violations === 0) continue;
    out.push(`  ${c.name}, first ${c.samples.length}:`);
    for (const s of c.samples) out.push(`    ${JSON.stringify(s)}`);
  }
  out.push(`  total: ${r.violations}`);
  out.push(
    r.blindChecks.length === 0
      ? `  (self-test: each check caught a planted violation, rolled back)`
      : `  SELF-TEST FAILED: blind checks: ${r.blindChecks.join(", ")}`,
  );
  out.push("");
  out.push(`worker processes that crashed on their own: ${r.crashes.workers.length}; driver errors survived by the run's process: ${r.crashes.runDriverErrors}`);
  const bySignature = new Map<string, UnexpectedExit[]>();
  for (const c of r.crashes.workers) bySignature.set(crashSignature(c), [...(bySignature.get(crashSignature(c)) ?? []), c]);
  for (const [signature, list] of bySignature) {
    out.push(`  ${list.length} × ${signature} (${list.map((c) => `worker ${c.slot}#${c.incarnation}`).join(", ")})`);
  }
  out.push("");
  out.push(JSON.stringify({ ...r, faultLog: undefined }));
  process.stdout.write(`${out.join("\n")}\n`);
}
