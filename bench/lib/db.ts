/**
 * Databases for measurements: created on the shared Postgres server from the `postgres`
 * maintenance database, named `bench_<system>_<scenario>_<random>`, and dropped afterwards.
 * Only databases created by this process (and matching that pattern) are ever dropped.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { log } from "./util.js";

/** The server the benchmark runs on (`DATABASE_URL`, as for the tests). */
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
/** The NATS server for systems that use one (`NATS_URL`). */
export const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";

/** A guard on every DROP: only names of this shape are ever dropped. */
const BENCH_DB_NAME = /^bench_[a-z0-9_]{1,50}$/;

/** `DATABASE_URL` pointing at database `name` instead. */
export function urlForDatabase(name: string): string {
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Opens a postgres.js client on `url` with notices silenced. */
export function connect(url: string, max = 1): postgres.Sql {
  return postgres(url, { max, onnotice: () => {}, idle_timeout: 0, connect_timeout: 10 });
}

/** Lowercase `[a-z0-9_]` version of a system or scenario name, for database names. */
export function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_|_$/g, "");
}

/**
 * Creates and drops the benchmark's databases through one connection to the `postgres`
 * database, and remembers what it created so that {@link Databases.dropAll} can clean up after
 * a crash or Ctrl-C.
 */
export class Databases {
  /** The maintenance connection (database `postgres`); also used for server-wide statistics. */
  readonly admin: postgres.Sql;
  private readonly created = new Set<string>();

  constructor() {
    this.admin = connect(urlForDatabase("postgres"), 2);
  }

  /**
   * Creates `bench_<system>_<scenario>_<random>`, optionally as a copy of `template` (a
   * database this object created). Returns its name.
   */
  async create(system: string, scenario: string, template?: string): Promise<string> {
    const name = `bench_${slug(system)}_${slug(scenario)}_${randomBytes(4).toString("hex")}`;
    if (!BENCH_DB_NAME.test(name)) throw new Error(`Refusing to create database "${name}": not a bench_ name.`);
    if (template !== undefined && !this.created.has(template)) {
      throw new Error(`Refusing to use "${template}" as a template: this run did not create it.`);
    }
    const from = template ?? "template0";
    this.created.add(name);
    await this.admin.unsafe(`CREATE DATABASE "${name}" TEMPLATE "${from}"`);
    return name;
  }

  /**
   * Drops a database this object created. Connections that were just closed may still have a
   * backend on their way out (client libraries resolve `end()` before the server process
   * exits), so this waits up to `graceMs` for them before forcing the rest off.
   */
  async drop(name: string, graceMs = 2_000): Promise<void> {
    if (!this.created.has(name) || !BENCH_DB_NAME.test(name)) {
      throw new Error(`Refusing to drop database "${name}": this run did not create it.`);
    }
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline) {
      const [row] = await this.admin<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = ${name}`;
      if (row!.n === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await this.admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    this.created.delete(name);
  }

  /** Drops everything still remembered (best effort, without waiting for connections). */
  async dropAll(): Promise<void> {
    for (const name of [...this.created]) {
      try {
        await this.drop(name, 0);
      } catch (err) {
        log(`could not drop ${name}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  /** Closes the admin connection. */
  async close(): Promise<void> {
    await this.admin.end({ timeout: 5 });
  }

  /** Runs `VACUUM ANALYZE` in database `name` (autovacuum may be off on the server). */
  async vacuumAnalyze(name: string): Promise<void> {
    const sql = connect(urlForDatabase(name));
    try {
      await sql.unsafe("VACUUM ANALYZE");
    } finally {
      await sql.end({ timeout: 5 });
    }
  }

  /** Names of `bench_%` databases that exist on the server but were not created by this run. */
  async leftovers(): Promise<string[]> {
    const rows = await this.admin<{ datname: string }[]>`
      SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%' ORDER BY datname`;
    return rows.map((r) => r.datname).filter((n) => !this.created.has(n));
  }
}
