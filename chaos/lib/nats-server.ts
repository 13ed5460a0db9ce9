/**
 * A private nats-server with JetStream for chaos runs: its own loopback port and its own store
 * directory, so that a chaos scenario can stop, kill and restart it without touching the
 * machine's shared nats-server on port 4222.
 *
 * It runs the Debian binary (`apt-get install nats-server`, version 2.9.10 on the reference
 * machine) rather than a download, so it works offline.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { ServerStartError, ServerStateError, ServerStopError } from "./errors.js";
import { freePort, LOOPBACK } from "./ports.js";
import { assertExecutable, exitOf, exitWithin, isRunning, LogTail, onProcessExit } from "./processes.js";
import { waitFor } from "./wait.js";

/** Where Debian's `nats-server` package installs the binary. */
export const DEFAULT_NATS_SERVER_BINARY = "/usr/sbin/nats-server";

/** Options of {@link startNatsServer}. */
export interface NatsServerOptions {
  /**
   * Path of the nats-server binary. Defaults to `$CHAOS_NATS_SERVER_BIN`, else
   * {@link DEFAULT_NATS_SERVER_BINARY}.
   */
  binary?: string;
  /** Client port on 127.0.0.1. Defaults to a free port chosen once and kept across restarts. */
  port?: number;
  /**
   * Token every client must present (`--auth`). Defaults to none (no authentication). Pass it to
   * clients as the `token` connection option; {@link NatsServer.url} does not embed it.
   */
  token?: string;
  /**
   * JetStream store directory (`-sd`). Defaults to a fresh temporary directory, which
   * {@link NatsServer.dispose} removes; a directory passed here is never removed.
   */
  storeDir?: string;
  /** How long `start()` waits for the server to answer `INFO`. Defaults to 10 000 ms. */
  startTimeoutMs?: number;
  /** How long `stop()` waits after SIGTERM before it resorts to SIGKILL. Defaults to 10 000 ms. */
  stopTimeoutMs?: number;
  /** Receives each line the server logs. Defaults to none; the last lines are kept for errors anyway. */
  onLog?: (line: string) => void;
  /** Extra command-line arguments, appended last. Defaults to none. */
  extraArgs?: string[];
}

/** The fields of the `INFO` line a NATS server sends first on every connection, as far as used here. */
export interface NatsServerInfo {
  server_id: string;
  server_name?: string;
  version: string;
  jetstream?: boolean;
  auth_required?: boolean;
  [field: string]: unknown;
}

/**
 * A private nats-server. Lifecycle methods are serialised: calling `stop()` while `start()` is
 * in progress waits for the start to finish first.
 */
export interface NatsServer {
  /** `nats://127.0.0.1:PORT`, without credentials. Stable across restarts. */
  readonly url: string;
  /** The client port on 127.0.0.1. Stable across restarts. */
  readonly port: number;
  /** The token clients must present, if the server requires one. */
  readonly token: string | undefined;
  /** The JetStream store directory. Stable across restarts, so streams survive them. */
  readonly storeDir: string;
  /** The pid of the running server, or `undefined` while it is stopped. */
  readonly pid: number | undefined;
  /** True while the server process runs. */
  readonly running: boolean;
  /** Milliseconds from spawn to ready in the most recent `start()`. */
  readonly lastStartMs: number | undefined;
  /** Starts the server and waits until it answers `INFO` with JetStream enabled. No-op while running. */
  start(): Promise<void>;
  /**
   * Graceful stop: SIGTERM, then waits for the process to exit. If it has not exited after
   * `stopTimeoutMs`, kills it and throws {@link ServerStopError}. No-op while stopped.
   */
  stop(): Promise<void>;
  /** Crash: SIGKILL, then waits for the process to exit. No-op while stopped. */
  kill(): Promise<void>;
  /** `stop()` then `start()`, on the same port and store directory. */
  restart(): Promise<void>;
  /**
   * Stops the server (SIGKILL if a graceful stop fails) and removes the store directory if this
   * module created it. Idempotent; the server cannot be started again afterwards.
   */
  dispose(): Promise<void>;
}

/**
 * Starts a private nats-server with JetStream on 127.0.0.1 and resolves once it is ready.
 * Throws {@link BinaryNotFoundError} if the binary is missing and {@link ServerStartError} if the
 * server exits during start-up or does not answer in time.
 */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = options.binary ?? process.env.CHAOS_NATS_SERVER_BIN ?? DEFAULT_NATS_SERVER_BINARY;
  await assertExecutable(binary, "apt-get install nats-server");
  const port = options.port ?? (await freePort());
  const ownsStoreDir = options.storeDir === undefined;
  const storeDir = options.storeDir ?? (await mkdtemp(path.join(tmpdir(), "dmm-chaos-nats-")));
  const server = new PrivateNatsServer(binary, port, storeDir, ownsStoreDir, options);
  try {
    await server.start();
  } catch (err) {
    await server.dispose();
    throw err;
  }
  return server;
}

/**
 * Connects to `port`, reads the `INFO` line a NATS server sends unprompted, and closes. Throws
 * if the connection fails, the first line is not `INFO`, or nothing arrives within `timeoutMs`.
 */
export function readNatsInfo(port: number, host: string = LOOPBACK, timeoutMs = 2_000): Promise<NatsServerInfo> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let buffer = "";
    const finish = (err: Error | undefined, info?: NatsServerInfo) => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(info as NatsServerInfo);
    };
    const timer = setTimeout(() => finish(new Error(`No INFO line from ${host}:${port} within ${timeoutMs} ms.`)), timeoutMs);
    socket.on("error", (err) => finish(err));
    socket.on("data", (chunk) => {
      buffer += chunk.toString();
      const end = buffer.indexOf("\r\n");
      if (end < 0) return;
      const line = buffer.slice(0, end);
      if (!line.startsWith("INFO ")) {
        finish(new Error(`Expected an INFO line from ${host}:${port}, got ${JSON.stringify(line.slice(0, 80))}.`));
        return;
      }
      try {
        finish(undefined, JSON.parse(line.slice(5)) as NatsServerInfo);
      } catch (err) {
        finish(new Error(`The INFO line from ${host}:${port} is not JSON.`, { cause: err }));
      }
    });
  });
}

class PrivateNatsServer implements NatsServer {
  readonly url: string;
  readonly token: string | undefined;
  lastStartMs: number | undefined;
  /** The current process; `undefined` before the first start and after a stop or kill. */
  private child: ChildProcess | undefined;
  /** Tail of the current process's log, for start-up error messages. */
  private log: LogTail | undefined;
  /** Tail of the chain of lifecycle operations; each one starts when the previous one settled. */
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private readonly unregisterExitHook: () => void;

  constructor(
    private readonly binary: string,
    readonly port: number,
    readonly storeDir: string,
    private readonly ownsStoreDir: boolean,
    private readonly options: NatsServerOptions,
  ) {
    this.url = `nats://${LOOPBACK}:${port}`;
    this.token = options.token;
    this.unregisterExitHook = onProcessExit(() => {
      if (isRunning(this.child)) this.child.kill("SIGKILL");
    });
  }

  get pid(): number | undefined {
    return isRunning(this.child) ? this.child.pid : undefined;
  }

  get running(): boolean {
    return isRunning(this.child);
  }

  start(): Promise<void> {
    return this.serialise(() => this.doStart());
  }

  stop(): Promise<void> {
    return this.serialise(() => this.doStop());
  }

  kill(): Promise<void> {
    return this.serialise(() => this.doKill());
  }

  restart(): Promise<void> {
    return this.serialise(async () => {
      await this.doStop();
      await this.doStart();
    });
  }

  dispose(): Promise<void> {
    return this.serialise(async () => {
      if (this.disposed) return;
      this.disposed = true;
      try {
        await this.doStop();
      } catch (err) {
        // A ServerStopError means the process was SIGKILLed instead: it is gone, which is all
        // dispose needs.
        if (!(err instanceof ServerStopError)) throw err;
      } finally {
        this.unregisterExitHook();
        if (this.ownsStoreDir) await rm(this.storeDir, { recursive: true, force: true });
      }
    });
  }

  private serialise<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation, operation);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async doStart(): Promise<void> {
    if (this.disposed) throw new ServerStateError(`The nats-server on port ${this.port} was disposed and cannot start again.`);
    if (isRunning(this.child)) return;
    // A name unique to this start: the readiness probe checks it, so that an INFO from whatever
    // else holds the port (a previous server still exiting, a foreign process) never counts.
    const serverName = `dmm-chaos-${this.port}-${randomBytes(4).toString("hex")}`;
    const args = ["-a", LOOPBACK, "-p", String(this.port), "-js", "-sd", this.storeDir, "--server_name", serverName];
    if (this.token !== undefined) args.push("--auth", this.token);
    args.push(...(this.options.extraArgs ?? []));
    const started = Date.now();
    const log = new LogTail(this.options.onLog);
    const child = spawn(this.binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.on("data", (chunk: Buffer) => log.push(chunk));
    child.stderr?.on("data", (chunk: Buffer) => log.push(chunk));
    let spawnError: Error | undefined;
    child.once("error", (err) => {
      spawnError = err;
    });
    this.child = child;
    this.log = log;
    try {
      await waitFor(
        async () => {
          const info = await readNatsInfo(this.port, LOOPBACK, 1_000);
          if (info.server_name !== serverName) {
            throw new Error(`Port ${this.port} is answered by another NATS server (${String(info.server_name)}), not the one just started (${serverName}).`);
          }
          if (info.jetstream !== true) throw new Error(`The server on port ${this.port} answered INFO without JetStream.`);
          return info;
        },
        {
          description: `the private nats-server on port ${this.port} to answer INFO`,
          timeoutMs: this.options.startTimeoutMs ?? 10_000,
          fatal: () =>
            spawnError || !isRunning(child)
              ? new ServerStartError(
                  `The private nats-server on port ${this.port} exited during start-up (exit code ${child.exitCode}, signal ${child.signalCode}). Its log ends with:\n${log.text()}`,
                  { cause: spawnError },
                )
              : undefined,
        },
      );
    } catch (err) {
      if (isRunning(child)) {
        child.kill("SIGKILL");
        await exitOf(child);
      }
      this.child = undefined;
      if (err instanceof ServerStartError) throw err;
      throw new ServerStartError(`The private nats-server on port ${this.port} did not become ready. Its log ends with:\n${log.text()}`, { cause: err });
    }
    this.lastStartMs = Date.now() - started;
  }

  private async doStop(): Promise<void> {
    const child = this.child;
    if (!isRunning(child)) return;
    child.kill("SIGTERM");
    const timeoutMs = this.options.stopTimeoutMs ?? 10_000;
    const status = await exitWithin(child, timeoutMs);
    if (status === undefined) {
      child.kill("SIGKILL");
      await exitOf(child);
      this.child = undefined;
      throw new ServerStopError(
        `The private nats-server on port ${this.port} did not exit within ${timeoutMs} ms of SIGTERM and was killed. Its log ends with:\n${this.log?.text() ?? ""}`,
      );
    }
    this.child = undefined;
  }

  private async doKill(): Promise<void> {
    const child = this.child;
    if (!isRunning(child)) return;
    child.kill("SIGKILL");
    await exitOf(child);
    this.child = undefined;
  }
}
