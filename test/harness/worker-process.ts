/**
 * A worker process for multi-process tests: opens a bucket and works the `probe` kind, whose
 * materializer records each run's start and end (with its pid) in `probe_runs` through its own
 * autocommit connection: the external record that overlap checks read.
 *
 * Usage: node --import tsx worker-process.ts <mode> <namespace> <databaseUrl>
 * Prints "ready" once working; closes cleanly on SIGTERM.
 */
import postgres from "postgres";
import { open } from "../../src/bucket.js";
import { createConsoleLogger } from "../../src/log.js";
import type { Context } from "../../src/types.js";
import { NATS_URL } from "./env.js";

const [mode, namespace, url] = process.argv.slice(2) as [string, string, string];
const ledger = postgres(url, { max: 4, onnotice: () => {} });

/** The probe: sleeps `sleepMs` (first attempt only when `slowOnce`), recording start and end. */
class Probe {
  id = "";
  sleepMs = 0;
  slowOnce = false;
  identity() {
    return this.id;
  }
  async materialize(ctx: Context) {
    const [row] = await ledger`insert into probe_runs (identity, pid, generation, reason, started_at)
      values (${this.id}, ${process.pid}, ${ctx.generation}, ${ctx.reason}, clock_timestamp()) returning id`;
    const sleep = this.slowOnce && ctx.reason === "recovery" ? 0 : this.sleepMs;
    if (sleep > 0) await new Promise((r) => setTimeout(r, sleep));
    await ledger`update probe_runs set ended_at = clock_timestamp() where id = ${row!.id}`;
  }
}

const bucket = await open(namespace, {
  database: url,
  nats: mode === "nats" ? NATS_URL : undefined,
  logger: createConsoleLogger("warn"),
  sweepIntervalMs: 1_000,
});
const stream = bucket.register("probe", Probe);
const work = stream.work({ concurrency: 8 });
process.stdout.write("ready\n");
process.on("SIGTERM", () => {
  void bucket.close().then(async () => {
    await work;
    await ledger.end();
    process.exit(0);
  });
});
