/**
 * The database handle dmm works through: a Drizzle database on postgres.js, whether dmm
 * opened it from a URL (and so owns and closes it) or the app passed its own client.
 */
import postgres from "postgres";
import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { sql, type SQL } from "drizzle-orm";
import { setTimeout as delay } from "node:timers/promises";
import { ConfigError, ConnectionError } from "../errors.js";
import type { DrizzleExecutor } from "../types.js";

/** What every store verb runs on: dmm's own Drizzle database or an app's Drizzle transaction. */
export type Executor = DrizzleExecutor;

/** dmm's connection to Postgres. */
export interface Database {
  /** Drizzle on the postgres.js client; what the store verbs execute on. */
  readonly db: PostgresJsDatabase;
  /** The postgres.js client, for LISTEN and reserved (session) connections. */
  readonly client: postgres.Sql;
  /** True when dmm created the client from a URL and must end it on close. */
  readonly owned: boolean;
  close(): Promise<void>;
}

/** Accepted forms of the `database` option. */
export type DatabaseInput = string | postgres.Sql | { $client: postgres.Sql };

/** Default pool size for clients dmm creates from a URL. */
export const DEFAULT_POOL_SIZE = 10;

/**
 * Opens dmm's database handle from a URL, a postgres.js client or a Drizzle database built on
 * postgres.js. A client dmm did not create is never ended by dmm.
 *
 * The clients dmm creates skip postgres.js's array-type look-up on each new connection
 * (`fetch_types: false`): postgres.js 3.4 drops that query's promise, so a connection terminated
 * while it runs (a Postgres restart, `pg_terminate_backend`) became an unhandled rejection that
 * crashed the worker process (bench/CHAOS.md finding 4). dmm needs no array types from the
 * driver: it sends arrays as literals (`pgArray`) or JSON, and reads them back as JSON.
 */
export function openDatabase(input: DatabaseInput, opts: { poolSize?: number; applicationName?: string } = {}): Database {
  if (typeof input === "string") {
    if (!/^postgres(ql)?:\/\//.test(input)) {
      throw new ConfigError(
        `The database option ${JSON.stringify(redact(input))} is not a postgres:// URL. Pass a URL such as postgres://postgres@127.0.0.1:5432/app, a postgres.js client or a Drizzle database.`,
      );
    }
    const client = postgres(input, {
      max: opts.poolSize ?? DEFAULT_POOL_SIZE,
      onnotice: () => {},
      fetch_types: false,
      connection: { application_name: opts.applicationName ?? "dmm" },
    });
    return wrap(client, true);
  }
  if (typeof input === "function" && typeof (input as postgres.Sql).unsafe === "function") {
    // A bare postgres.js client: Drizzle would switch its json and date parsers for every user
    // of that client, so dmm opens its own pool with the same connection settings instead.
    const own = postgres(connectionOptions(input as postgres.Sql, { max: opts.poolSize ?? DEFAULT_POOL_SIZE, applicationName: opts.applicationName ?? "dmm" }));
    return wrap(own, true);
  }
  const inner = (input as { $client?: unknown } | null)?.$client;
  if (typeof inner === "function" && typeof (inner as postgres.Sql).unsafe === "function") {
    return wrap(inner as postgres.Sql, false);
  }
  throw new ConfigError(
    "The database option must be a postgres:// URL, a postgres.js client, or a Drizzle database created with drizzle-orm/postgres-js; other drivers (node-postgres, neon) are not supported.",
  );
}

/**
 * The connection settings of `client` (host, port, database, user, password, TLS, …) for
 * another client of dmm's own on the same server, with `overrides` applied, and without the
 * array-type look-up (see openDatabase).
 */
export function connectionOptions(
  client: postgres.Sql,
  overrides: { max: number; max_lifetime?: number; idle_timeout?: number; applicationName: string },
): postgres.Options<Record<string, never>> {
  const o = client.options as unknown as Record<string, unknown>;
  return {
    host: o.host as string,
    port: o.port as number,
    path: o.path as string | undefined,
    database: o.database as string,
    user: o.user as string,
    pass: o.pass as string,
    ssl: o.ssl as boolean,
    connect_timeout: o.connect_timeout as number,
    keep_alive: o.keep_alive as number,
    target_session_attrs: o.target_session_attrs as undefined,
    connection: { ...(o.connection as Record<string, string>), application_name: overrides.applicationName },
    max: overrides.max,
    ...(overrides.max_lifetime !== undefined ? { max_lifetime: overrides.max_lifetime } : {}),
    ...(overrides.idle_timeout !== undefined ? { idle_timeout: overrides.idle_timeout } : {}),
    onnotice: () => {},
    fetch_types: false,
  } as postgres.Options<Record<string, never>>;
}

function wrap(client: postgres.Sql, owned: boolean): Database {
  const db = drizzle(client);
  let closed = false;
  return {
    db,
    client,
    owned,
    async close() {
      if (closed || !owned) return;
      closed = true;
      await client.end({ timeout: 5 });
    },
  };
}

/**
 * A FROM item that makes the statement's own (implicit) transaction commit without waiting for
 * its WAL to reach disk. For the dispatch bookkeeping only: takes, claims and the relay's
 * marks. Losing one of those in a Postgres crash gives back what it took (the outbox row, a
 * lease that the crash voids anyway, since every worker session and its advisory lock dies
 * with Postgres and the reaper frees their leases), so nothing committed by a user is lost,
 * and the wait for the flush (about half a millisecond here) left the path from a notify to
 * its run. The next synchronous commit (a finish, a notify) flushes these too. Never use it
 * for a statement inside a caller's transaction: it lasts to the end of the transaction.
 */
export const SOFT_COMMIT: SQL = sql.raw(`(select set_config('synchronous_commit', 'off', true)) as soft_commit`);

/**
 * `DMM_TRACE=1` (a profiling aid): count every statement's calls, time and rows, and print the
 * totals to stderr when the process exits.
 */
const TRACE = process.env.DMM_TRACE === "1";
const traced = new Map<string, { n: number; ms: number; rows: number }>();
function trace(query: SQL, ms: number, n: number): void {
  const key = (query.queryChunks.find((c) => typeof c === "object" && c && "value" in c) as { value: string[] } | undefined)?.value.join("").replace(/\s+/g, " ").slice(0, 70) ?? "?";
  const t = traced.get(key) ?? { n: 0, ms: 0, rows: 0 };
  t.n++; t.ms += ms; t.rows += n;
  traced.set(key, t);
}
if (TRACE) process.on("exit", () => { for (const [k, t] of traced) console.error(`${t.n}\t${t.ms.toFixed(0)}ms\t${(t.ms / t.n).toFixed(2)}ms/call\t${(t.rows / t.n).toFixed(1)} rows/call\t${k}`); });
/**
 * Runs a query and returns its rows (postgres.js returns an array-like RowList).
 *
 * As a prepared statement: Drizzle's `execute` sends raw SQL unnamed, and postgres.js then
 * describes every such statement first (Parse and Describe, wait for the parameter types, then
 * Bind and Execute): two round trips, a parse and a plan each time, and a stall whenever the
 * event loop is busy between the two, which under load made a statement take 10x its server
 * time. dmm's statement texts are a small fixed set, so each connection prepares each once.
 * A client made with `prepare: false` (for a transaction-mode pooler) keeps that setting.
 */
export async function rows<T>(exec: Executor, query: SQL): Promise<T[]> {
  try {
    const t0 = TRACE ? performance.now() : 0;
    const direct = postgresJsOf(exec);
    let result: unknown;
    if (direct) {
      const q = direct.dialect.sqlToQuery(query);
      result = await direct.client.unsafe(q.sql, q.params as never[], { prepare: true });
    } else {
      result = await exec.execute(query);
    }
    if (TRACE) trace(query, performance.now() - t0, Array.isArray(result) ? result.length : 0);
    return (Array.isArray(result) ? result : ((result as { rows?: T[] }).rows ?? [])) as T[];
  } catch (err) {
    throw asConnectionError(err);
  }
}

/** The postgres.js client and SQL dialect behind a Drizzle database or transaction, if that is what it is. */
function postgresJsOf(exec: Executor): { client: postgres.Sql; dialect: { sqlToQuery(q: SQL): { sql: string; params: unknown[] } } } | null {
  const e = exec as unknown as { session?: { client?: postgres.Sql }; dialect?: { sqlToQuery?: unknown } };
  const client = e.session?.client;
  if (!client || typeof client.unsafe !== "function" || typeof e.dialect?.sqlToQuery !== "function") return null;
  return { client, dialect: e.dialect as { sqlToQuery(q: SQL): { sql: string; params: unknown[] } } };
}

/**
 * Unwraps Drizzle's query wrapper to the Postgres error (whose `code` callers branch on) and
 * wraps network-level failures in `ConnectionError`.
 */
export function asConnectionError(err: unknown): unknown {
  // Drizzle wraps every failure with the whole query text in its message; keep the cause.
  const inner = (err as { cause?: unknown } | null)?.cause;
  if (inner instanceof Error && err !== null && typeof err === "object" && "query" in err && "params" in err) err = inner;
  const code = (err as { code?: string } | null)?.code;
  if (code && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|CONNECTION_|CONNECT_TIMEOUT|57P0)/.test(code)) {
    return new ConnectionError(`Postgres is unreachable or dropped the connection (${code}); dmm retries with backoff.`, { cause: err });
  }
  return err;
}

/** A JSON array parameter, for `jsonb_to_recordset`: one parameter however long the batch. */
export function jsonParam(value: unknown): SQL {
  return sql`${JSON.stringify(value)}::jsonb`;
}

/**
 * A Postgres array literal, for a parameter cast to an array type (`::bigint[]`, `::tid[]`,
 * `::boolean[]`, …): numbers as they are, booleans as `t`/`f`, strings double-quoted (with `"`
 * and `\` escaped, so commas and braces are safe), undefined as NULL. Sent as text, so the
 * driver needs no array type look-up.
 */
export function pgArray(values: readonly (number | boolean | string | undefined)[]): string {
  const item = (v: number | boolean | string | undefined) =>
    v === undefined ? "NULL"
    : typeof v === "boolean" ? (v ? "t" : "f")
    : typeof v === "number" ? String(v)
    : `"${v.replace(/["\\]/g, "\\$&")}"`;
  return `{${values.map(item).join(",")}}`;
}

/** Hides the password of a connection URL in messages. */
export function redact(url: string): string {
  return url.replace(/(:\/\/[^:/@]*:)[^@]*@/, "$1***@");
}

/** postgres.js error codes of a lost connection. */
const CONNECTION_LOSS = /^(CONNECTION_CLOSED|CONNECTION_DESTROYED|CONNECTION_ENDED|ECONNRESET|EPIPE|ETIMEDOUT)$/;

/** A stand-in for a postgres.js query that rejects: awaitable, with `.values()` (Drizzle uses both). */
function rejectedQuery(err: Error): PromiseLike<never> & { values(): Promise<never> } {
  return {
    then: (onFulfilled, onRejected) => Promise.reject(err).then(onFulfilled, onRejected),
    values: () => Promise.reject(err),
  };
}

/**
 * `db.transaction(fn)` that survives losing its connection. postgres.js 3.4.9
 * (porsager/postgres#1208, unreleased fix) then writes the transaction's ROLLBACK or next
 * statement to a closed socket from a setImmediate, which throws and ends the process; or, if
 * the pool reconnected the same connection object meanwhile, runs the next statement on the
 * new session in autocommit, outside the transaction (and outside any fence it checked).
 * So: once the transaction has failed, its handle refuses statements with CONNECTION_CLOSED;
 * and a callback that failed because the connection was lost never settles, so postgres.js
 * never writes its own ROLLBACK or COMMIT to the dead connection (the pending callback holds
 * only its closure and is collected with it). A loss-like error on a connection that is still
 * alive (the transaction has not failed within `graceMs`, default 1 s) is rethrown as usual.
 */
export async function guardedTransaction<T>(db: PostgresJsDatabase, fn: (tx: Executor) => Promise<T>, graceMs = 1_000): Promise<T> {
  let lost = false;
  let settled: Promise<void> | undefined;
  const never = new Promise<never>(() => {});
  const run = db.transaction(async (tx) => {
    const scoped = (tx as unknown as { session: { client: postgres.Sql } }).session.client;
    const unsafe = scoped.unsafe.bind(scoped);
    (scoped as { unsafe: unknown }).unsafe = (...args: Parameters<postgres.Sql["unsafe"]>) =>
      lost
        ? rejectedQuery(Object.assign(new Error("The transaction's connection to Postgres was lost."), { code: "CONNECTION_CLOSED" }))
        : unsafe(...args);
    let result: T;
    try {
      result = await fn(tx);
    } catch (err) {
      const cause = (err as { cause?: unknown } | null)?.cause ?? err;
      if (!CONNECTION_LOSS.test(String((cause as { code?: unknown } | null)?.code))) throw err;
      await Promise.race([settled, delay(graceMs)]);
      if (lost) return never;
      throw err;
    }
    if (lost) return never;
    return result;
  });
  settled = run.then(
    () => {},
    () => {
      lost = true;
    },
  );
  return run;
}
