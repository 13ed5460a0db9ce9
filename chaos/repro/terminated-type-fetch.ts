/**
 * Reproduction: postgres.js 3.4.9 leaves an unhandled rejection behind when a pooled connection
 * is terminated (pg_terminate_backend) while it fetches array types, the first thing every new
 * connection does with the default `fetch_types: true` (upstream porsager/postgres#1192,
 * #1205, #1223). Node turns it into a crash by default: the chaos run's worker processes die
 * with "unhandled rejection: PostgresError: terminating connection due to administrator
 * command" (or CONNECTION_CLOSED / ECONNRESET, the same promise failing another way).
 * Every query here is awaited and caught; the rejection is the driver's own.
 *
 * Usage: `npx tsx chaos/repro/terminated-type-fetch.ts [pool|listen|session]` (own private Postgres;
 * `pool` reproduces, usually within a run; `listen` and `session` are the controls that do not).
 * `FETCH_TYPES=0` turns the type fetch off, and the rejections stop.
 */
import postgres from "postgres";
import { startPostgresServer } from "../lib/index.js";

const what = process.argv[2] ?? "pool";
const pg = await startPostgresServer();
const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
const rejections: string[] = [];
process.on("unhandledRejection", (err, p) => rejections.push(`${String((err as Error).message)} from ${p?.constructor?.name} ${JSON.stringify((p as unknown as { strings?: unknown }).strings ?? null)}`));
const sql = postgres(pg.url, { max: 4, onnotice: () => {}, fetch_types: process.env.FETCH_TYPES !== "0", connection: { application_name: "victim" } });
let stop = false;
if (what === "listen") await sql.listen("chan", () => {});
const load = (async () => {
  while (!stop) {
    try {
      if (what === "pool") await sql`select pg_sleep(0.01)`;
      if (what === "session") await sql`select 1`;
    } catch {
      /* expected */
    }
    await new Promise((r) => setTimeout(r, 10));
  }
})();
for (let i = 0; i < 100; i++) {
  await admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'victim'`;
  await new Promise((r) => setTimeout(r, 150));
}
stop = true;
await load;
console.log(`${what}: ${rejections.length} unhandled rejections`, rejections.slice(0, 3));
await sql.end({ timeout: 1 });
await admin.end({ timeout: 1 });
await pg.dispose();
