/** Parent side of the background-load child (`load-child.ts`). */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { LoadChildMessage, LoadParentMessage } from "./load-child.js";
import type { Target } from "./system.js";
import { Scope, withTimeout } from "./util.js";
import { trackChild } from "./workers.js";

const SCRIPT = fileURLToPath(new URL("./load-child.ts", import.meta.url));

/** A child process enqueueing a steady background load through a system's producer. */
export class LoadProcess {
  private readonly child: ChildProcess;
  private readonly messages: LoadChildMessage[] = [];
  private waiters: Array<() => void> = [];
  private exitError: Error | undefined;

  private constructor(moduleUrl: string, systemName: string) {
    this.child = spawn(process.execPath, ["--import", "tsx", SCRIPT, moduleUrl, systemName], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    trackChild(this.child);
    this.child.on("message", (m) => {
      this.messages.push(m as LoadChildMessage);
      this.wake();
    });
    this.child.on("exit", (code, signal) => {
      this.exitError = new Error(`load generator exited (exit code ${code}, signal ${signal})`);
      this.wake();
    });
  }

  /** Spawns the load child for system `systemName` (from `moduleUrl`); killed when `scope` closes. */
  static async spawn(moduleUrl: string, systemName: string, scope: Scope): Promise<LoadProcess> {
    const load = new LoadProcess(moduleUrl, systemName);
    scope.defer("kill load generator", () => void load.child.kill("SIGKILL"));
    await load.next("loaded");
    return load;
  }

  /** Starts enqueueing `ratePerS` keys per second into `target`. */
  async start(target: Target, ratePerS: number): Promise<void> {
    this.send({ type: "start", target, ratePerS });
    await this.next("started");
  }

  /** Stops the load; returns the achieved rate and the number of keys enqueued. */
  async stop(): Promise<{ achievedPerS: number; count: number }> {
    this.send({ type: "stop" });
    const msg = await this.next("stopped");
    return { achievedPerS: msg.achievedPerS, count: msg.count };
  }

  private send(msg: LoadParentMessage): void {
    if (!this.child.connected) throw this.exitError ?? new Error("load generator is not running");
    this.child.send(msg);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((w) => w());
  }

  private next<T extends LoadChildMessage["type"]>(type: T): Promise<Extract<LoadChildMessage, { type: T }>> {
    const found = async (): Promise<Extract<LoadChildMessage, { type: T }>> => {
      for (;;) {
        const error = this.messages.find((m) => m.type === "error");
        if (error && error.type === "error") throw new Error(`load generator: ${error.message}`);
        const i = this.messages.findIndex((m) => m.type === type);
        if (i >= 0) return this.messages.splice(i, 1)[0] as Extract<LoadChildMessage, { type: T }>;
        if (this.exitError) throw this.exitError;
        await new Promise<void>((resolve) => this.waiters.push(resolve));
      }
    };
    return withTimeout(found(), 30_000, `"${type}" from the load generator`);
  }
}
