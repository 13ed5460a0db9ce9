/**
 * Server-side cost measurement: Postgres commits (`pg_stat_database.xact_commit`), WAL bytes
 * (`pg_current_wal_lsn()`) and Postgres CPU time (from `/proc`, which requires the server to
 * run on this machine and /proc to be readable — the benchmark runs as root).
 *
 * Caveats, stated in the report too:
 * - Backends publish their statistics at most once a second while busy and after about 10 s
 *   when idle (PostgreSQL 15), but always when they exit; {@link pgSnapshot} is therefore
 *   taken after the measurement's connections were closed.
 * - WAL position and the postmaster's process tree are server-wide: activity in other
 *   databases during a measurement (the tests of a colleague, say) is included. The snapshot
 *   also returns the commits of all other databases so that such noise is visible.
 */
import { readFileSync, readdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import type postgres from "postgres";
import { sleep, wallNow } from "./util.js";

/** Clock ticks per second of /proc's utime/stime fields (`getconf CLK_TCK`, almost always 100). */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** One reading of the server's counters. */
export interface PgSnapshot {
  /** `xact_commit` of the measured database. */
  commits: number;
  /** `xact_commit` of every other database by name (noise indicator; includes the harness). */
  otherCommits: Map<string, number>;
  /** `pg_current_wal_lsn()` as a byte position. */
  walBytes: bigint;
  /** CPU time (user + system) of all Postgres processes, in µs; null when not measurable. */
  cpuUs: number | null;
}

/** Differences between two snapshots. */
export interface PgDelta {
  commits: number;
  otherCommits: number;
  walBytes: number;
  cpuUs: number | null;
}

/** Parses an LSN such as `0/1A2B3C4` into a byte position. */
export function parseLsn(lsn: string): bigint {
  const [hi, lo] = lsn.split("/");
  return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
}

/**
 * Reads commits, WAL position and Postgres CPU. Statistics are read in a fresh snapshot
 * (`pg_stat_clear_snapshot()` first), from the admin connection, which belongs to database
 * `postgres` so that these reads never count against the measured database.
 */
export async function pgSnapshot(admin: postgres.Sql, database: string): Promise<PgSnapshot> {
  const rows = await admin.begin(async (tx) => {
    await tx`SELECT pg_stat_clear_snapshot()`;
    return tx<{ datname: string | null; commits: string; lsn: string }[]>`
      SELECT datname, xact_commit::text AS commits, pg_current_wal_lsn()::text AS lsn FROM pg_stat_database`;
  });
  const otherCommits = new Map<string, number>();
  let commits = 0;
  for (const row of rows) {
    if (row.datname === database) commits = Number(row.commits);
    else otherCommits.set(row.datname ?? "(shared)", Number(row.commits));
  }
  return {
    commits,
    otherCommits,
    walBytes: parseLsn(rows[0]!.lsn),
    cpuUs: await postgresCpuUs(admin),
  };
}

/**
 * `after − before`. Other databases count from zero if they were created meanwhile; databases
 * dropped meanwhile (other people's test databases) are lost, so `otherCommits` is a lower bound.
 */
export function pgDelta(before: PgSnapshot, after: PgSnapshot): PgDelta {
  let otherCommits = 0;
  for (const [name, n] of after.otherCommits) otherCommits += n - (before.otherCommits.get(name) ?? 0);
  return {
    commits: after.commits - before.commits,
    otherCommits,
    walBytes: Number(after.walBytes - before.walBytes),
    cpuUs: before.cpuUs === null || after.cpuUs === null ? null : after.cpuUs - before.cpuUs,
  };
}

let postmasterPid: number | null | undefined;

/** The postmaster's pid: the parent of our own backend. Null if /proc does not show it. */
async function findPostmaster(admin: postgres.Sql): Promise<number | null> {
  if (postmasterPid !== undefined) return postmasterPid;
  const [row] = await admin<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`;
  try {
    const status = readFileSync(`/proc/${row!.pid}/status`, "utf8");
    const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]);
    const cmdline = readFileSync(`/proc/${ppid}/cmdline`, "utf8");
    postmasterPid = cmdline.includes("postgres") ? ppid : null;
  } catch {
    postmasterPid = null;
  }
  return postmasterPid;
}

/** Fields of /proc/<pid>/stat after the command name (which may contain spaces). */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null; // the process exited meanwhile
  }
}

/** Ticks → µs. */
function ticksToUs(ticks: number): number {
  return (ticks * 1e6) / CLK_TCK;
}

/**
 * CPU time of every Postgres process, in µs: each live child of the postmaster (backends,
 * walwriter, checkpointer, …: utime + stime) plus the postmaster's own time and the time of
 * its children that already exited (cutime + cstime, credited to the postmaster when it
 * reaps them — this is how closed connections stay counted). Null if not measurable.
 */
export async function postgresCpuUs(admin: postgres.Sql): Promise<number | null> {
  const pm = await findPostmaster(admin);
  if (pm === null) return null;
  // A child reaped between reading the postmaster and reading the child would be in neither
  // sum (a connection closed right before the final snapshot: a whole backend's work lost), so
  // the scan is repeated until the postmaster's reaped-children time did not move during it.
  for (let attempt = 0; ; attempt++) {
    const own = statFields(pm);
    if (!own) return null;
    // Fields after the name start at field 3 (state): utime is field 14 → index 11.
    const reaped = Number(own[13]) + Number(own[14]);
    let ticks = Number(own[11]) + Number(own[12]) + reaped;
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      const fields = statFields(Number(entry));
      if (fields && Number(fields[1]) === pm) ticks += Number(fields[11]) + Number(fields[12]);
    }
    const again = statFields(pm);
    if (!again) return null;
    if (Number(again[13]) + Number(again[14]) === reaped || attempt >= 20) return ticksToUs(ticks);
    await sleep(5);
  }
}

/**
 * CPU time (µs) of the backends connected to `database` right now, by pid. Used as a
 * noise-free cross-check of {@link postgresCpuUs}: only those connections' work is counted
 * (but not background processes such as the WAL writer).
 */
export async function backendCpuUs(admin: postgres.Sql, database: string): Promise<Map<number, number>> {
  const rows = await admin<{ pid: number }[]>`SELECT pid FROM pg_stat_activity WHERE datname = ${database}`;
  const result = new Map<number, number>();
  for (const { pid } of rows) {
    const us = processCpuUs(pid);
    if (us !== null) result.set(pid, us);
  }
  return result;
}

/**
 * CPU time (µs, utime + stime, threads included) of one process, or null if unreadable: the
 * worker children's own cost per item, next to the Postgres side.
 */
export function processCpuUs(pid: number): number | null {
  const fields = statFields(pid);
  return fields ? ticksToUs(Number(fields[11]) + Number(fields[12])) : null;
}

/** Sum over `after` of (after − before), counting pids absent from `before` from zero. */
export function backendCpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, us] of after) sum += us - (before.get(pid) ?? 0);
  return sum;
}

/** Busy and total jiffies of all CPUs from /proc/stat, or null where it cannot be read. */
export function cpuJiffies(): { busy: number; total: number } | null {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    // idle and iowait are fields 4 and 5 of the cpu line.
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
  } catch {
    return null;
  }
}

/**
 * Waits until the machine is quiet: the share of busy CPU over a `windowMs` window (default
 * 500 ms) at most `maxBusy` (default 0.25), or `timeoutMs` (default 15 s) passed. Latency
 * samples start only then, so that the system measured first after a heavy scenario does not
 * pay for what the previous one left behind (Postgres writing back buffers, JetStream
 * compacting its store). Returns the last window's busy share (null where /proc is unreadable).
 */
export async function waitForQuiet(maxBusy = 0.25, windowMs = 500, timeoutMs = 15_000): Promise<number | null> {
  const deadline = wallNow() + timeoutMs;
  for (;;) {
    const a = cpuJiffies();
    await sleep(windowMs);
    const busy = busyShare(a, cpuJiffies());
    if (busy === null) return null;
    if (busy <= maxBusy || wallNow() >= deadline) return busy;
  }
}

/** The share of the machine's CPU time that was busy between two {@link cpuJiffies} readings. */
export function busyShare(before: { busy: number; total: number } | null, after: { busy: number; total: number } | null): number | null {
  if (!before || !after || after.total === before.total) return null;
  return Math.round(((after.busy - before.busy) / (after.total - before.total)) * 1000) / 1000;
}
