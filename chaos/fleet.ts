/**
 * The chaos run's worker processes. Each slot owns two fault-injecting proxies (one in front of
 * Postgres, one in front of NATS) that outlive its processes, so a restarted worker reconnects
 * through the same proxies and a half-open link can be cut for one worker while the others
 * keep working.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, readFileSync, type WriteStream } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startProxy, type Proxy } from "./lib/index.js";
import type { BucketCounters, RunMessage, WorkerBucket, WorkerConfig, WorkerMessage, WorkerTimings, WorkProfile } from "./model.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const WORKER_SCRIPT = path.join(ROOT, "chaos", "worker.ts");

/** Options of {@link Fleet}. */
export interface FleetOptions {
  slots: number;
  /** The buckets of slot `i`. */
  bucketsOf(slot: number): WorkerBucket[];
  postgresPort: number;
  natsPort: number;
  /** Postgres URL of the private server; the host and port are replaced by the slot's proxy. */
  postgresUrl: string;
  /** Extra postgres.js URL parameters for the workers (e.g. `fetch_types=false`), or empty. */
  postgresParams?: string;
  timings: WorkerTimings;
  profile: WorkProfile;
  /** Directory for one log file per slot. */
  logDir: string;
  /** Called with each message of a worker process. */
  onMessage?(slot: number, msg: WorkerMessage): void;
}

/** A worker process's exit that nobody asked for (not SIGKILLed by the run, not stopped). */
export interface UnexpectedExit {
  slot: number;
  incarnation: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
  /** The process's last output lines (the error that ended it, usually). */
  tail: string[];
}

/** One worker slot: its proxies and its current process. */
export interface Slot {
  readonly index: number;
  readonly pgProxy: Proxy;
  readonly natsProxy: Proxy;
  readonly buckets: WorkerBucket[];
  /** The running process, if any. */
  child: ChildProcess | undefined;
  /** Processes started in this slot so far. */
  incarnation: number;
  /** True between spawn and the `ready` message. */
  starting: boolean;
  /** Pending restart timer after a kill. */
  restartTimer: NodeJS.Timeout | undefined;
}

/** Worker processes with per-slot proxies; see the module comment. */
export class Fleet {
  readonly slots: Slot[] = [];
  readonly unexpectedExits: UnexpectedExit[] = [];
  /** Log lines counted by message (`materialize:lease-lost`, `dispatch:fallback`, …) over all processes. */
  readonly logCounts = new Map<string, number>();
  /** Last counters of every process incarnation, keyed `slot/incarnation`. */
  readonly counters = new Map<string, Record<string, BucketCounters>>();
  #logs: WriteStream[] = [];
  #expected = new WeakSet<ChildProcess>();
  #stopped = false;

  private constructor(private readonly options: FleetOptions) {}

  /** Creates the slots' proxies (no process is started yet). */
  static async create(options: FleetOptions): Promise<Fleet> {
    const fleet = new Fleet(options);
    for (let i = 0; i < options.slots; i++) {
      const pgProxy = await startProxy({ targetPort: options.postgresPort });
      const natsProxy = await startProxy({ targetPort: options.natsPort });
      fleet.slots.push({ index: i, pgProxy, natsProxy, buckets: options.bucketsOf(i), child: undefined, incarnation: 0, starting: false, restartTimer: undefined });
      fleet.#logs.push(createWriteStream(path.join(options.logDir, `worker-${i}.log`), { flags: "a" }));
    }
    return fleet;
  }

  /** True while slot `i` has a live process. */
  alive(i: number): boolean {
    const c = this.slots[i]!.child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  /** Starts a process in slot `i` (no-op while one runs) and returns it; it reports `ready` later. */
  start(i: number): ChildProcess | undefined {
    if (this.#stopped) return undefined;
    const slot = this.slots[i]!;
    if (slot.restartTimer) clearTimeout(slot.restartTimer);
    slot.restartTimer = undefined;
    if (this.alive(i)) return slot.child;
    slot.incarnation++;
    const killFile = path.join(this.options.logDir, `relay-kill-${i}-${slot.incarnation}.json`);
    const url = new URL(this.options.postgresUrl);
    url.port = String(slot.pgProxy.port);
    for (const [k, v] of new URLSearchParams(this.options.postgresParams ?? "")) url.searchParams.set(k, v);
    const config: WorkerConfig = {
      slot: i,
      incarnation: slot.incarnation,
      database: url.toString(),
      nats: `nats://127.0.0.1:${slot.natsProxy.port}`,
      buckets: slot.buckets,
      killFile,
      timings: this.options.timings,
      profile: this.options.profile,
    };
    const child = spawn(process.execPath, ["--import", "tsx", "--conditions=dmm-source", WORKER_SCRIPT], {
      cwd: ROOT,
      env: { ...process.env, CHAOS_WORKER: JSON.stringify(config) },
      stdio: ["ignore", "pipe", "pipe", "ipc"],
    });
    slot.child = child;
    slot.starting = true;
    const incarnation = slot.incarnation;
    const log = this.#logs[i]!;
    if (!log.writableEnded) log.write(`--- ${new Date().toISOString()} slot ${i} incarnation ${incarnation} pid ${child.pid}\n`);
    let buffer = "";
    const tail: string[] = [];
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (!log.writableEnded) log.write(`${line}\n`);
        tail.push(line.length > 400 ? `${line.slice(0, 400)}…` : line);
        if (tail.length > 8) tail.shift();
        const m = /"msg":"([^"]+)"/.exec(line);
        const key = m ? m[1]! : line.startsWith("dmm ") ? line.split(" ").slice(1, 3).join(" ") : "(other output)";
        this.logCounts.set(key, (this.logCounts.get(key) ?? 0) + 1);
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("message", (raw) => {
      const msg = raw as WorkerMessage;
      if (msg.type === "ready") slot.starting = false;
      if (msg.type === "stats") this.counters.set(`${i}/${incarnation}`, msg.buckets);
      this.options.onMessage?.(i, msg);
    });
    child.on("error", () => {});
    child.on("exit", (code, signal) => {
      if (!log.writableEnded) log.write(`--- ${new Date().toISOString()} slot ${i} incarnation ${incarnation} exited code=${code} signal=${signal}\n`);
      const at = Date.now();
      // A relay kill the worker performed on itself leaves a note of what it killed.
      if (existsSync(killFile)) {
        this.#expected.add(child);
        try {
          this.options.onMessage?.(i, JSON.parse(readFileSync(killFile, "utf8")) as WorkerMessage);
        } catch {
          /* a torn note: the kill still counts as expected */
        }
      }
      // A worker that kills itself (a relay kill) reports it over IPC first; give that message a
      // moment to arrive before calling the exit unexpected.
      setTimeout(() => {
        if (this.#expected.has(child)) return;
        this.unexpectedExits.push({ slot: i, incarnation, code, signal, at, tail });
        // Like a supervisor would: a crashed worker comes back after a second.
        if (!this.#stopped && slot.child === child) this.scheduleRestart(i, 1_000);
      }, 250);
    });
    return child;
  }

  /** Sends a message to slot `i`'s process, if it runs. */
  send(i: number, msg: RunMessage): boolean {
    const c = this.slots[i]!.child;
    if (!c || !this.alive(i) || !c.connected) return false;
    c.send(msg);
    return true;
  }

  /**
   * SIGKILLs slot `i`'s process and resolves once it exited. With `restartAfterMs`, starts a
   * new process that long after the kill (unless the fleet stopped meanwhile).
   */
  async kill(i: number, restartAfterMs?: number, expectSelfKill = false): Promise<boolean> {
    const slot = this.slots[i]!;
    const child = slot.child;
    let killed = false;
    if (child && this.alive(i)) {
      this.#expected.add(child);
      const exited = new Promise((r) => child.once("exit", r));
      // A process expected to kill itself gets 3 s to do so before the run does it.
      const timer = setTimeout(() => child.kill("SIGKILL"), expectSelfKill ? 3_000 : 0);
      await exited;
      clearTimeout(timer);
      killed = true;
    }
    if (restartAfterMs !== undefined) this.scheduleRestart(i, restartAfterMs);
    return killed;
  }

  /** Marks the current process of slot `i` as about to die on purpose (a relay kill it performs itself). */
  expectExit(i: number): void {
    const c = this.slots[i]!.child;
    if (c) this.#expected.add(c);
  }

  /** Starts slot `i` again after `ms`, unless it was started meanwhile. */
  scheduleRestart(i: number, ms: number): void {
    const slot = this.slots[i]!;
    if (slot.restartTimer) clearTimeout(slot.restartTimer);
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      this.start(i);
    }, ms);
  }

  /** Resolves once every slot's process has reported `ready`, or after `timeoutMs` (false). */
  async allReady(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.slots.every((s) => this.alive(s.index) && !s.starting)) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  /** Worker processes alive and past `ready` right now. */
  readyCount(): number {
    return this.slots.filter((s) => this.alive(s.index) && !s.starting).length;
  }

  /** Sum of every incarnation's last reported counters, per namespace. */
  totals(): Record<string, Omit<BucketCounters, "natsFallback">> {
    const out: Record<string, Omit<BucketCounters, "natsFallback">> = {};
    for (const byNs of this.counters.values()) {
      for (const [ns, c] of Object.entries(byNs)) {
        const t = (out[ns] ??= { runs: 0, succeeded: 0, failed: 0, parked: 0, leaseLost: 0, swept: 0, reapedWorkers: 0 });
        t.runs += c.runs;
        t.succeeded += c.succeeded;
        t.failed += c.failed;
        t.parked += c.parked;
        t.leaseLost += c.leaseLost;
        t.swept += c.swept;
        t.reapedWorkers += c.reapedWorkers;
      }
    }
    return out;
  }

  /**
   * Stops every process: SIGTERM (a clean `bucket.close()`), SIGKILL after `graceMs`. No
   * process is started afterwards.
   */
  async stop(graceMs: number): Promise<void> {
    this.#stopped = true;
    await Promise.all(
      this.slots.map(async (slot) => {
        if (slot.restartTimer) clearTimeout(slot.restartTimer);
        const child = slot.child;
        if (!child || !this.alive(slot.index)) return;
        this.#expected.add(child);
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
        await exited;
        clearTimeout(timer);
      }),
    );
  }

  /** Kills every process at once and closes the proxies and logs. Safe to call twice. */
  async dispose(): Promise<void> {
    this.#stopped = true;
    for (const slot of this.slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      if (slot.child && this.alive(slot.index)) {
        this.#expected.add(slot.child);
        slot.child.kill("SIGKILL");
      }
    }
    await Promise.all(this.slots.flatMap((s) => [s.pgProxy.close(), s.natsProxy.close()]));
    await Promise.all(this.#logs.map((l) => new Promise<void>((r) => l.end(() => r()))));
    this.#logs = [];
  }
}
