/**
 * Parent-side control of worker child processes: spawn, start, watch progress, calibrate
 * clocks, stop, and always kill. Every child ever spawned is tracked in one set so that
 * {@link killAllWorkers} can SIGKILL the survivors on any exit path of the benchmark.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { processCpuUs } from "./measure.js";
import type { ChildMessage, ParentMessage, Progress } from "./protocol.js";
import type { System, Target } from "./system.js";
import { Scope, wallNow, withTimeout } from "./util.js";

const live = new Set<{ kill(): void }>();

/** SIGKILLs every child process still alive. Synchronous, so it is safe in an `exit` handler. */
export function killAllWorkers(): void {
  for (const child of live) child.kill();
}

/**
 * Adds a child process that is not a {@link WorkerProcess} (the load generator) to the set
 * {@link killAllWorkers} kills; it leaves the set when it exits.
 */
export function trackChild(child: ChildProcess): void {
  const entry = { kill: () => void child.kill("SIGKILL") };
  live.add(entry);
  child.once("exit", () => live.delete(entry));
}

/** How a worker child runs its handler. */
export interface StartOptions {
  /** Concurrent runs per process. */
  concurrency: number;
  /** Simulated work per run in ms (0 = trivial). */
  workMs: number;
  /** Report each run whose key starts with this prefix; null = report none. */
  tracePrefix: string | null;
}

/** One worker child process. */
export class WorkerProcess {
  /** Latest counters reported by the child. */
  progress: Progress = { started: 0, done: 0, inFlight: 0, overlaps: 0, firstStartAt: null, lastDoneAt: null };
  /**
   * Child clock minus parent clock in ms, from {@link WorkerProcess.calibrateClock}; subtract
   * it from child timestamps (see {@link WorkerProcess.toParentTime}).
   */
  clockOffsetMs = 0;
  /** Rejects when the child exits without being asked to, or reports an error. */
  readonly failure: Promise<never>;

  private readonly child: ChildProcess;
  private readonly events = new EventEmitter();
  private exited = false;
  private expectingExit = false;
  private rejectFailure!: (err: Error) => void;

  private constructor(
    readonly label: string,
    script: string,
  ) {
    this.events.setMaxListeners(100);
    this.failure = new Promise<never>((_, reject) => {
      this.rejectFailure = reject;
    });
    this.failure.catch(() => {}); // observed through waits; never an unhandled rejection
    // BENCH_CPU_PROF=<dir>: each worker child writes a V8 CPU profile there when it exits.
    const profile = process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
    this.child = spawn(process.execPath, [...profile, "--import", "tsx", script], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      env: process.env,
    });
    live.add(this);
    this.child.on("message", (raw) => this.onMessage(raw as ChildMessage));
    this.child.on("error", (err) => this.rejectFailure(new Error(`${label}: ${err.message}`, { cause: err })));
    this.child.on("exit", (code, signal) => {
      this.exited = true;
      live.delete(this);
      if (!this.expectingExit) {
        this.rejectFailure(new Error(`${label} exited unexpectedly (exit code ${code}, signal ${signal})`));
      }
      this.events.emit("exit");
    });
  }

  /** Spawns the system's worker script and waits until its modules are loaded. */
  static async spawn(system: System, label: string, timeoutMs = 30_000): Promise<WorkerProcess> {
    const worker = new WorkerProcess(label, system.workerScript);
    try {
      await worker.waitMessage("loaded", timeoutMs);
    } catch (err) {
      worker.kill();
      throw err;
    }
    return worker;
  }

  /** OS process id. */
  get pid(): number {
    return this.child.pid!;
  }

  /** Starts the worker inside the child and waits until it reports ready. */
  async start(target: Target, options: StartOptions, workerIndex: number, timeoutMs = 30_000): Promise<void> {
    this.send({ type: "start", target, workerIndex, ...options });
    await this.waitMessage("ready", timeoutMs);
  }

  /**
   * Estimates the child's clock offset NTP-style: the parent stamps t1, the child answers with
   * its time, the parent stamps t2; offset = child − (t1 + t2) / 2, taken from the sample with
   * the shortest round trip. On one machine this is typically a few µs; it is measured rather
   * than assumed because latency percentiles compare timestamps of two processes.
   */
  async calibrateClock(samples = 15): Promise<number> {
    let best = { rtt: Infinity, offset: 0 };
    for (let seq = 0; seq < samples; seq++) {
      const t1 = wallNow();
      const reply = this.waitMessage("clock", 5_000);
      this.send({ type: "clock", seq });
      const msg = (await reply) as Extract<ChildMessage, { type: "clock" }>;
      const t2 = wallNow();
      if (t2 - t1 < best.rtt) best = { rtt: t2 - t1, offset: msg.at - (t1 + t2) / 2 };
    }
    this.clockOffsetMs = best.offset;
    return best.offset;
  }

  /** Converts a child timestamp to the parent's clock. */
  toParentTime(childTime: number): number {
    return childTime - this.clockOffsetMs;
  }

  /** Asks for an immediate progress report. */
  flush(): void {
    this.send({ type: "flush" });
  }

  /** Calls `fn` on each progress report; returns an unsubscribe function. */
  onProgress(fn: () => void): () => void {
    this.events.on("progress", fn);
    return () => this.events.off("progress", fn);
  }

  /** Calls `fn(key, at)` on each traced run start (`at` in the parent's clock). */
  onTrace(fn: (key: string, at: number) => void): () => void {
    const listener = (key: string, at: number) => fn(key, this.toParentTime(at));
    this.events.on("trace", listener);
    return () => this.events.off("trace", listener);
  }

  /** CPU time the child has used so far, in µs; null if unreadable. */
  cpuUs(): number | null {
    return processCpuUs(this.pid);
  }

  /** Peak resident set size of the child so far (`VmHWM`), in MiB; null if unreadable. */
  peakRssMb(): number | null {
    try {
      const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
      const kb = /^VmHWM:\s+(\d+)\s+kB/m.exec(status)?.[1];
      return kb === undefined ? null : Number(kb) / 1024;
    } catch {
      return null;
    }
  }

  /** Asks the child to stop its worker and exit; SIGKILLs it if that takes over `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<void> {
    if (this.exited) return;
    this.expectingExit = true;
    const exited = new Promise<void>((resolve) => this.events.once("exit", resolve));
    this.send({ type: "stop" });
    try {
      await withTimeout(Promise.race([exited, this.failure]), timeoutMs, `${this.label} to stop`);
    } catch (err) {
      this.kill();
      throw err;
    }
  }

  /** SIGKILLs the child now (no-op if it already exited). */
  kill(): void {
    this.expectingExit = true;
    if (!this.exited) this.child.kill("SIGKILL");
  }

  private send(msg: ParentMessage): void {
    if (this.exited || !this.child.connected) throw new Error(`${this.label} is not running`);
    this.child.send(msg);
  }

  private onMessage(msg: ChildMessage): void {
    switch (msg.type) {
      case "progress": {
        const { type: _type, ...progress } = msg;
        this.progress = progress;
        this.events.emit("progress");
        break;
      }
      case "trace":
        this.events.emit("trace", msg.key, msg.at);
        break;
      case "error":
        this.rejectFailure(new Error(`${this.label} reported: ${msg.message}`));
        break;
      default:
        this.events.emit(msg.type, msg);
    }
  }

  private async waitMessage(type: ChildMessage["type"], timeoutMs: number): Promise<ChildMessage> {
    let listener: ((msg: ChildMessage) => void) | undefined;
    const got = new Promise<ChildMessage>((resolve) => {
      listener = resolve;
      this.events.once(type, listener);
    });
    try {
      return await withTimeout(Promise.race([got, this.failure]), timeoutMs, `"${type}" from ${this.label}`);
    } finally {
      this.events.off(type, listener!);
    }
  }
}

/** Progress summed over a group, with times converted to the parent's clock. */
export interface Totals {
  started: number;
  done: number;
  inFlight: number;
  overlaps: number;
  /** Earliest run start over all children, or null. */
  firstStartAt: number | null;
  /** Latest run completion over all children, or null. */
  lastDoneAt: number | null;
}

/** The worker processes of one measurement, started and stopped together. */
export class WorkerGroup {
  /** Rejects as soon as any child fails. */
  readonly failure: Promise<never>;

  private constructor(readonly workers: WorkerProcess[]) {
    this.failure = Promise.race(workers.map((w) => w.failure));
    this.failure.catch(() => {});
  }

  /**
   * Spawns `count` children of `system` in parallel (modules loaded, worker not started),
   * calibrates their clocks and registers their killing with `scope`.
   */
  static async spawn(system: System, count: number, scope: Scope): Promise<WorkerGroup> {
    const spawned: WorkerProcess[] = [];
    scope.defer(`kill ${system.name} workers`, () => spawned.forEach((w) => w.kill()));
    await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const w = await WorkerProcess.spawn(system, `${system.name} worker ${i}`);
        spawned.push(w);
      }),
    );
    spawned.sort((a, b) => a.label.localeCompare(b.label));
    // Calibrated while the children are idle, so that round trips are short and stable.
    for (const w of spawned) await w.calibrateClock();
    return new WorkerGroup(spawned);
  }

  /** Starts every child's worker on `target` and waits until all report ready. */
  async start(target: Target, options: StartOptions): Promise<void> {
    await Promise.all(this.workers.map((w, i) => w.start(target, options, i)));
  }

  /** Summed counters, in the parent's clock. */
  totals(): Totals {
    const t: Totals = { started: 0, done: 0, inFlight: 0, overlaps: 0, firstStartAt: null, lastDoneAt: null };
    for (const w of this.workers) {
      const p = w.progress;
      t.started += p.started;
      t.done += p.done;
      t.inFlight += p.inFlight;
      t.overlaps += p.overlaps;
      if (p.firstStartAt !== null) {
        const at = w.toParentTime(p.firstStartAt);
        t.firstStartAt = t.firstStartAt === null ? at : Math.min(t.firstStartAt, at);
      }
      if (p.lastDoneAt !== null) {
        const at = w.toParentTime(p.lastDoneAt);
        t.lastDoneAt = t.lastDoneAt === null ? at : Math.max(t.lastDoneAt, at);
      }
    }
    return t;
  }

  /**
   * Resolves with the totals as soon as `predicate(totals)` holds (checked on every progress
   * report, no polling); rejects if a child fails or after `timeoutMs`, naming `what` and the
   * progress so far.
   */
  async waitFor(predicate: (t: Totals) => boolean, what: string, timeoutMs: number): Promise<Totals> {
    const unsubscribe: Array<() => void> = [];
    const reached = new Promise<Totals>((resolve) => {
      const check = () => {
        const t = this.totals();
        if (predicate(t)) resolve(t);
      };
      for (const w of this.workers) unsubscribe.push(w.onProgress(check));
      check();
    });
    try {
      return await withTimeout(Promise.race([reached, this.failure]), timeoutMs, what, () => {
        const t = this.totals();
        return `progress so far: ${t.started} started, ${t.done} done, ${t.inFlight} in flight`;
      });
    } finally {
      unsubscribe.forEach((u) => u());
    }
  }

  /** Calls `fn(key, at)` for every traced run start of any child (`at` in the parent's clock). */
  onTrace(fn: (key: string, at: number) => void): () => void {
    const offs = this.workers.map((w) => w.onTrace(fn));
    return () => offs.forEach((off) => off());
  }

  /** Asks every child for a progress report now and waits briefly for the answers. */
  async flush(): Promise<Totals> {
    const answered = this.workers.map((w) => new Promise<void>((resolve) => {
      const off = w.onProgress(() => {
        off();
        resolve();
      });
    }));
    this.workers.forEach((w) => w.flush());
    await withTimeout(Promise.race([Promise.all(answered), this.failure]), 5_000, "progress flush");
    return this.totals();
  }

  /** CPU time all children have used so far, in µs; null if any is unreadable. */
  cpuUs(): number | null {
    let sum = 0;
    for (const w of this.workers) {
      const us = w.cpuUs();
      if (us === null) return null;
      sum += us;
    }
    return sum;
  }

  /** Largest peak RSS among the children, in MiB. */
  peakRssMb(): number | null {
    const values = this.workers.map((w) => w.peakRssMb()).filter((v): v is number => v !== null);
    return values.length ? Math.max(...values) : null;
  }

  /** Stops every child gracefully (in parallel); children that do not stop in time are killed. */
  async stop(): Promise<void> {
    const results = await Promise.allSettled(this.workers.map((w) => w.stop()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }
}
