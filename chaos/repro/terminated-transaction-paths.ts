/**
 * Reproduction and mitigation check for postgres.js 3.4.9's `nextWrite` crash
 * (porsager/postgres#1208, #1154, #1066): how a transaction whose backend dies reaches a write
 * to a null socket, and what each proposed fix changes. Each case runs in a child process of
 * its own (the crash ends a process) on one private Postgres:
 *
 * - `in-flight`: a statement of the transaction is running when its backend is terminated. The
 *   statement rejects (CONNECTION_CLOSED), the callback rejects, and begin() itself sends
 *   ROLLBACK on the closed connection: the write is scheduled with setImmediate and throws.
 *   This is the path of dmm's own transactions (fenced ctx.transaction, the finish with
 *   children), whose callbacks only run statements.
 * - `between`: the backend dies while the callback awaits something else; its next statement
 *   is written to the closed connection.
 * - `stale-after-reconnect`: like `between`, but the pool reconnects the same connection object
 *   (max 1) before the callback's next statement: that statement runs on the new session, in
 *   autocommit, outside the (rolled-back) transaction, and commits.
 *
 * Variants: `plain` (the driver as installed), `patched` (PG_DRIVER points at a copy of the
 * driver with the guard of .tmp/chaos-findings.md), `dmm` (`guardedTransaction` of
 * src/store/db.ts, in dmm since 24dd7ba). Every variant goes through Drizzle, as dmm does.
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/terminated-transaction-paths.ts`
 * (optionally `PG_DRIVER=/path/to/patched/postgres/src/index.js`).
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import postgres from "postgres";
import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { sql } from "drizzle-orm";
import { guardedTransaction } from "../../src/store/db.js";
import { startPostgresServer } from "../lib/index.js";

type Case = "in-flight" | "between" | "stale-after-reconnect";
type Variant = "plain" | "patched" | "dmm";

/** The code of a driver error, under Drizzle's query wrapper. */
function codeOf(err: unknown): string {
  const inner = (err as { cause?: unknown } | null)?.cause ?? err;
  return String((inner as { code?: unknown } | null)?.code ?? (err as { code?: unknown } | null)?.code);
}

type PgTx = Parameters<Parameters<PostgresJsDatabase["transaction"]>[0]>[0];

async function child(url: string, c: Case, variant: Variant): Promise<void> {
  const driver = variant === "patched" ? ((await import(process.env.PG_DRIVER!)) as { default: typeof postgres }).default : postgres;
  const client = driver(url, { max: c === "stale-after-reconnect" ? 1 : 2, onnotice: () => {}, fetch_types: false });
  const db = drizzle(client);
  const admin = postgres(url, { max: 1, onnotice: () => {}, fetch_types: false });
  let crashed: Error | undefined;
  process.on("uncaughtException", (err) => {
    crashed = err;
  });
  await admin`create table if not exists repro_t (v int)`;
  await admin`truncate repro_t`;
  const transaction = <T>(fn: (tx: PgTx) => Promise<T>): Promise<T> =>
    variant === "dmm" ? guardedTransaction(db, fn as unknown as Parameters<typeof guardedTransaction<T>>[1]) : db.transaction(fn);
  let outcome: string;
  try {
    await transaction(async (tx) => {
      const [row] = (await tx.execute(sql`select pg_backend_pid() as pid`)) as unknown as { pid: number }[];
      if (c === "in-flight") {
        const sleeping = tx.execute(sql`select pg_sleep(2)`);
        await delay(100);
        await admin`select pg_terminate_backend(${row!.pid})`;
        await sleeping;
      } else {
        await admin`select pg_terminate_backend(${row!.pid})`;
        await delay(300);
        // The pool reconnects its only connection object for this statement.
        if (c === "stale-after-reconnect") await db.execute(sql`select 1`);
        await tx.execute(sql`insert into repro_t values (1)`);
      }
    });
    outcome = "transaction resolved";
  } catch (err) {
    outcome = `transaction rejected (${codeOf(err)})`;
  }
  await delay(500);
  const [after] = await admin<{ n: number }[]>`select count(*)::int as n from repro_t`.catch(() => [{ n: -1 }]);
  const poolOk = await Promise.race([db.execute(sql`select 1 as ok`).then(() => "pool answers", () => "pool query failed"), delay(3_000).then(() => "POOL HANGS")]);
  console.log(
    JSON.stringify({
      case: c,
      variant,
      outcome,
      crashed: crashed ? `${crashed.name}: ${crashed.message} @ ${crashed.stack?.split("\n")[1]?.trim()}` : null,
      rowsCommittedOutsideTheTransaction: after!.n,
      afterwards: poolOk,
    }),
  );
  await Promise.all([client.end({ timeout: 1 }), admin.end({ timeout: 1 })]);
}

if (process.env.REPRO_CHILD) {
  const { url, c, variant } = JSON.parse(process.env.REPRO_CHILD) as { url: string; c: Case; variant: Variant };
  await child(url, c, variant);
  process.exit(0);
} else {
  const pg = await startPostgresServer();
  const variants: Variant[] = process.env.PG_DRIVER ? ["plain", "patched", "dmm"] : ["plain", "dmm"];
  try {
    for (const c of ["in-flight", "between", "stale-after-reconnect"] as Case[]) {
      for (const variant of variants) {
        const r = spawnSync(process.execPath, ["--import", "tsx", "--conditions=dmm-source", fileURLToPath(import.meta.url)], {
          env: { ...process.env, REPRO_CHILD: JSON.stringify({ url: pg.url, c, variant }) },
          encoding: "utf8",
          timeout: 30_000,
        });
        const line = r.stdout.trim().split("\n").pop() ?? "";
        console.log(line.startsWith("{") ? line : JSON.stringify({ case: c, variant, exit: r.status, stderr: r.stderr.slice(-300) }));
      }
    }
  } finally {
    await pg.dispose();
  }
}
