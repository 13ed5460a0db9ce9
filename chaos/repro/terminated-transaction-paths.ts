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
 * driver with the guard of .tmp/chaos-findings.md), `guarded` (the callback never settles after
 * its connection was lost: the dmm-side workaround proposed for src/store/db.ts).
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/terminated-transaction-paths.ts`
 * (optionally `PG_DRIVER=/path/to/patched/postgres/src/index.js`).
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import postgres from "postgres";
import { startPostgresServer } from "../lib/index.js";

type Case = "in-flight" | "between" | "stale-after-reconnect";
type Variant = "plain" | "patched" | "guarded";

/** postgres.js connection-loss codes: the transaction's own connection may be gone. */
const LOSS = /^(CONNECTION_CLOSED|CONNECTION_DESTROYED|CONNECTION_ENDED|ECONNRESET|EPIPE|ETIMEDOUT)$/;

/**
 * The dmm-side workaround: run `fn` in `client.begin`, but never let the callback settle once
 * the transaction's connection is gone, so begin() never writes ROLLBACK / COMMIT to it; begin()
 * rejects on its own then (its race with the connection's onclose). A loss-like error whose
 * connection is still alive (begin() has not rejected within `graceMs`) is rethrown.
 */
async function guardedBegin<T>(client: postgres.Sql, fn: (tx: postgres.TransactionSql) => Promise<T>, graceMs = 1_000): Promise<T> {
  let lost = false;
  const never = new Promise<never>(() => {});
  const run = client.begin(async (tx) => {
    try {
      const result = await fn(tx);
      if (lost) return never;
      return result;
    } catch (err) {
      if (!LOSS.test(String((err as { code?: unknown }).code))) throw err;
      const until = Date.now() + graceMs;
      while (!lost && Date.now() < until) await delay(20);
      if (lost) return never;
      throw err;
    }
  }) as Promise<T>;
  run.catch(() => {
    lost = true;
  });
  return run;
}

async function child(url: string, c: Case, variant: Variant): Promise<void> {
  const driver = variant === "patched" ? ((await import(process.env.PG_DRIVER!)) as { default: typeof postgres }).default : postgres;
  const sql = driver(url, { max: c === "stale-after-reconnect" ? 1 : 2, onnotice: () => {}, fetch_types: false });
  const admin = driver(url, { max: 1, onnotice: () => {}, fetch_types: false });
  let crashed: Error | undefined;
  process.on("uncaughtException", (err) => {
    crashed = err;
  });
  await sql`create table if not exists repro_t (v int)`;
  await sql`truncate repro_t`;
  const begin = variant === "guarded" ? <T>(fn: (tx: postgres.TransactionSql) => Promise<T>) => guardedBegin(sql, fn) : <T>(fn: (tx: postgres.TransactionSql) => Promise<T>) => sql.begin(fn) as Promise<T>;
  let outcome: string;
  try {
    await begin(async (tx) => {
      const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
      if (c === "in-flight") {
        const sleeping = tx`select pg_sleep(2)`;
        await delay(100);
        await admin`select pg_terminate_backend(${row!.pid})`;
        await sleeping;
      } else {
        await admin`select pg_terminate_backend(${row!.pid})`;
        await delay(300);
        // The pool reconnects its only connection object for this statement.
        if (c === "stale-after-reconnect") await sql`select 1`;
        await tx`insert into repro_t values (1)`;
      }
    });
    outcome = "transaction resolved";
  } catch (err) {
    outcome = `transaction rejected (${(err as { code?: string }).code ?? (err as Error).message})`;
  }
  await delay(500);
  const [after] = await admin<{ n: number }[]>`select count(*)::int as n from repro_t`.catch(() => [{ n: -1 }]);
  const poolOk = await Promise.race([sql`select 1 as ok`.then(() => "pool answers", () => "pool query failed"), delay(3_000).then(() => "POOL HANGS")]);
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
  await Promise.all([sql.end({ timeout: 1 }), admin.end({ timeout: 1 })]);
}

if (process.env.REPRO_CHILD) {
  const { url, c, variant } = JSON.parse(process.env.REPRO_CHILD) as { url: string; c: Case; variant: Variant };
  await child(url, c, variant);
  process.exit(0);
} else {
  const pg = await startPostgresServer();
  const variants: Variant[] = process.env.PG_DRIVER ? ["plain", "patched", "guarded"] : ["plain", "guarded"];
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
