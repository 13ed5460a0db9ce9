/**
 * Investigation: which postgres.js use leaves an unhandled rejection behind when its backends
 * are terminated (pg_terminate_backend) over and over. Usage:
 * `npx tsx chaos/repro/terminate-listen.ts <listen|pool|session>`; starts its own Postgres.
 */
import postgres from "postgres";
import { startPostgresServer } from "../lib/index.js";

const what = process.argv[2] ?? "listen";
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
for (let i = 0; i < 40; i++) {
  await admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'victim'`;
  await new Promise((r) => setTimeout(r, 150));
}
stop = true;
await load;
console.log(`${what}: ${rejections.length} unhandled rejections`, rejections.slice(0, 3));
await sql.end({ timeout: 1 });
await admin.end({ timeout: 1 });
await pg.dispose();
