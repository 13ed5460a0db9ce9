/**
 * Child-process plumbing shared by the private servers: log tails, exit waiting, /proc
 * inspection and a last-resort cleanup when the Node process exits.
 *
 * @internal Used by `nats-server.ts` and `postgres-server.ts`; not part of the chaos API.
 */
import type { ChildProcess } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { access, readdir, readFile, readlink } from "node:fs/promises";
import { BinaryNotFoundError } from "./errors.js";

/** How a child process ended, as Node reports it. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * The last lines a server printed, kept so that a start failure can quote the server's own
 * explanation. Lines are also passed to `onLog` as they arrive, when given.
 */
export class LogTail {
  private readonly lines: string[] = [];
  private partial = "";

  /** @param maxLines Lines kept; older ones are dropped. Defaults to 200. */
  constructor(
    private readonly onLog?: (line: string) => void,
    private readonly maxLines = 200,
  ) {}

  /** Feeds a chunk of output; complete lines are stored and forwarded. */
  push(chunk: Buffer | string): void {
    const text = this.partial + chunk.toString();
    const parts = text.split("\n");
    this.partial = parts.pop() ?? "";
    for (const line of parts) {
      this.lines.push(line);
      if (this.lines.length > this.maxLines) this.lines.shift();
      this.onLog?.(line);
    }
  }

  /** The last `count` lines (default 30) joined with newlines, including an unfinished one. */
  text(count = 30): string {
    const tail = this.lines.slice(-count);
    if (this.partial) tail.push(this.partial);
    return tail.join("\n");
  }
}

/**
 * Resolves when `child` has exited. Listens to `exit`, not `close`: a postmaster's backends
 * inherit its stderr pipe, so `close` would wait for processes that outlive the one we spawned.
 */
export function exitOf(child: ChildProcess): Promise<ExitStatus> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

/** Resolves to the exit status, or to `undefined` if `child` is still running after `timeoutMs`. */
export async function exitWithin(child: ChildProcess, timeoutMs: number): Promise<ExitStatus | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    return await Promise.race([exitOf(child), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * True while `child` runs: it was spawned (a failed spawn leaves `pid` undefined and may never
 * emit `exit`) and Node has not observed its exit.
 */
export function isRunning(child: ChildProcess | undefined): child is ChildProcess {
  return child !== undefined && child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Throws {@link BinaryNotFoundError} with `installHint` unless `binary` is an executable file. */
export async function assertExecutable(binary: string, installHint: string): Promise<void> {
  try {
    await access(binary, fsConstants.X_OK);
  } catch (err) {
    throw new BinaryNotFoundError(binary, installHint, { cause: err });
  }
}

/**
 * True if `pid` is a live process. A zombie counts as dead: it holds no memory (so no shared
 * memory attachment) and no sockets, and in a container whose PID 1 does not reap, zombies of
 * orphaned postgres backends may linger indefinitely.
 */
export async function isProcessAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // The state follows the parenthesised command name, which may itself contain ") ".
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * Pids of live processes whose working directory is `dir`. A postmaster changes into its data
 * directory and every backend and auxiliary process inherits that, so this finds all processes of
 * one cluster, including orphans reparented away after the postmaster was killed.
 */
export async function pidsWithCwd(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let cwd: string;
    try {
      cwd = await readlink(`/proc/${entry}/cwd`);
    } catch {
      continue;
    }
    if (cwd === dir && (await isProcessAlive(Number(entry)))) found.push(Number(entry));
  }
  return found;
}

/**
 * Pids of live processes whose command line contains `needle` (e.g. a private store directory).
 * Tests use it as a leak check.
 */
export async function pidsWithArg(needle: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8");
    } catch {
      continue;
    }
    if (cmdline.split("\0").some((arg) => arg.includes(needle)) && (await isProcessAlive(Number(entry)))) {
      found.push(Number(entry));
    }
  }
  return found;
}

const exitHooks = new Set<() => void>();
let exitHookInstalled = false;

/**
 * Registers a synchronous last-resort cleanup for when the Node process exits without having
 * disposed a server (a test that threw before `afterAll`, a `process.exit()`). Returns the
 * function that unregisters it. It cannot help when Node itself is SIGKILLed.
 */
export function onProcessExit(hook: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const fn of exitHooks) {
        try {
          fn();
        } catch {
          // Best effort: the process is going away and has nowhere to report to.
        }
      }
    });
  }
  exitHooks.add(hook);
  return () => exitHooks.delete(hook);
}
