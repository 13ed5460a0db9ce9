/**
 * Reproduction: a postgres.js (3.4.9) transaction whose backend is terminated between two of
 * its statements. Expected: the second statement rejects (CONNECTION_CLOSED) and the process
 * goes on. Run with `npx tsx --conditions=dmm-source chaos/repro/terminated-transaction.ts`;
 * it starts its own private Postgres and prints what happened.
 */
import postgres from "postgres";
import { startPostgresServer } from "../lib/index.js";

const pg = await startPostgresServer();
const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
let crashed: unknown;
process.on("uncaughtException", (err) => {
  crashed = err;
});
try {
  await sql.begin(async (tx) => {
    const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    await admin`select pg_terminate_backend(${row!.pid})`;
    await new Promise((r) => setTimeout(r, 200));
    await tx`select 1`;
  });
  console.log("the second statement succeeded (unexpected)");
} catch (err) {
  console.log(`the transaction rejected: ${(err as Error).message}`);
}
await new Promise((r) => setTimeout(r, 300));
console.log(crashed ? `UNCAUGHT EXCEPTION (would have crashed the process): ${(crashed as Error).stack}` : "no uncaught exception");
await Promise.all([sql.end({ timeout: 1 }), admin.end({ timeout: 1 })]);
await pg.dispose();
