/**
 * Reproduction: a matter claimed ahead (prefetch) whose lease is aborted before its run starts
 * (here: the worker's session connection is terminated, so every lease is aborted) still has
 * `materialize` called, and when that run's promise rejects nobody handles it: the process
 * gets an unhandled rejection, which Node turns into a crash by default.
 *
 * Cause (src/worker/engine.ts): `raceAbort(Promise.resolve().then(() => instance.materialize(ctx)), signal)`
 * returns `Promise.reject(signal.reason)` at once when the signal is already aborted, without
 * attaching a handler to the materialize promise it was given (and without stopping it).
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/prefetched-aborted-run.ts`; it starts its
 * own Postgres and prints what happened.
 */
import postgres from "postgres";
import { open, type Context } from "dmm";
import { startPostgresServer } from "../lib/index.js";

const pg = await startPostgresServer();
const rejections: string[] = [];
process.on("unhandledRejection", (err) => rejections.push(`${(err as Error).name}: ${(err as Error).message}`));
const admin = postgres(pg.url, { max: 1, onnotice: () => {}, fetch_types: false });
let materializeCalls = 0;

class Slow {
  id = "";
  identity() {
    return this.id;
  }
  async materialize(ctx: Context) {
    materializeCalls++;
    // Any fenced write (or anything honouring ctx.signal) rejects on an aborted run.
    await ctx.transaction(async () => {});
    await new Promise((r) => setTimeout(r, 1_500));
  }
}

try {
  const bucket = await open("repro", { database: pg.url, migrate: true, leaseMs: 3_000, heartbeatMs: 500, logger: silent() });
  const stream = bucket.register("slow", Slow);
  const work = stream.work({ concurrency: 1, prefetch: 4 });
  await bucket.notify(Array.from({ length: 5 }, (_, i) => Object.assign(new Slow(), { id: `s${i}` })));
  await new Promise((r) => setTimeout(r, 700)); // one run in flight, four claimed ahead
  const [t] = await admin<{ n: number }[]>`select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where application_name = 'dmm:session'`;
  console.log(`terminated ${t!.n} session connection(s); waiting for the prefetched matters to start`);
  await new Promise((r) => setTimeout(r, 6_000));
  await bucket.close();
  await work;
  console.log(`materialize called ${materializeCalls} times`);
  console.log(rejections.length > 0 ? `UNHANDLED REJECTIONS (each would crash the process): ${rejections.length}\n  ${rejections.slice(0, 3).join("\n  ")}` : "no unhandled rejection");
} finally {
  await admin.end({ timeout: 1 });
  await pg.dispose();
}

function silent() {
  const l = { debug() {}, info() {}, warn() {}, error() {}, child: () => l };
  return l;
}
