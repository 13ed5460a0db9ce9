/**
 * Applies dmm's migrations into its own migrations table (`dmm.dmm_migrations`), under a
 * session advisory lock so that any number of processes may migrate at once, and checks on
 * open that the database matches this version of dmm.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type postgres from "postgres";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate as drizzleMigrate } from "drizzle-orm/postgres-js/migrator";
import { SchemaVersionError } from "../errors.js";

/** Where the generated and custom migrations ship: `<package>/migrations`. */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL("../../migrations", import.meta.url));
/** dmm's private bookkeeping table, never the app's `drizzle.__drizzle_migrations`. */
export const MIGRATIONS_SCHEMA = "dmm";
export const MIGRATIONS_TABLE = "dmm_migrations";
/** First key of every advisory lock dmm takes ("dmm" in ASCII). */
export const LOCK_CLASS = 6581613;
const MIGRATE_LOCK = 1;

interface JournalEntry {
  idx: number;
  when: number;
  tag: string;
}

/** The migrations this version of dmm ships, from drizzle-kit's journal. */
export function expectedMigrations(): JournalEntry[] {
  const text = readFileSync(`${MIGRATIONS_FOLDER}/meta/_journal.json`, "utf8");
  return (JSON.parse(text) as { entries: JournalEntry[] }).entries;
}

/**
 * Brings the database's dmm schema up to this version. Safe to call from many processes at
 * once and when already current. One connection of `client` holds the lock in a transaction
 * (ended with it, also when the process dies) while the migration runs on another, so the
 * client needs a pool of at least two. (A transaction rather than `client.reserve()`:
 * postgres.js 3.4.9 never hands out a reserved connection it had to open anew when
 * `fetch_types` is off, as it is on dmm's own clients.)
 */
export async function applyMigrations(client: postgres.Sql): Promise<{ applied: number }> {
  return (await client.begin(async (lock) => {
    await lock`select pg_advisory_xact_lock(${LOCK_CLASS}, ${MIGRATE_LOCK})`;
    // Counted on the pool: the lock's transaction may see one snapshot throughout.
    const before = await appliedCount(client);
    await drizzleMigrate(drizzle(client), {
      migrationsFolder: MIGRATIONS_FOLDER,
      migrationsSchema: MIGRATIONS_SCHEMA,
      migrationsTable: MIGRATIONS_TABLE,
    });
    return { applied: (await appliedCount(client)) - before };
  })) as { applied: number };
}

async function appliedCount(conn: postgres.Sql): Promise<number> {
  const exists = await conn`select to_regclass(${`${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE}`}) as t`;
  if (!exists[0]?.t) return 0;
  const r = await conn.unsafe(`select count(*)::int as n from "${MIGRATIONS_SCHEMA}"."${MIGRATIONS_TABLE}"`);
  return r[0]!.n as number;
}

/**
 * Refuses to work on a database whose dmm migrations differ from this version's: older ones
 * name the command that upgrades them, newer ones name both versions.
 */
export async function checkSchemaVersion(client: postgres.Sql): Promise<void> {
  const expected = expectedMigrations();
  const latest = expected[expected.length - 1]!;
  const exists = await client`select to_regclass(${`${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE}`}) as t`;
  if (!exists[0]?.t) {
    throw new SchemaVersionError(
      `This database has no dmm schema yet. Run "npx dmm migrate" (or call migrate() from "dmm") once, then open the bucket again; or pass { migrate: true } to open().`,
    );
  }
  const applied = await client.unsafe(
    `select created_at::bigint as when from "${MIGRATIONS_SCHEMA}"."${MIGRATIONS_TABLE}" order by created_at`,
  );
  const whens = applied.map((r) => Number(r.when));
  const known = new Set(expected.map((e) => e.when));
  const unknown = whens.filter((w) => !known.has(w));
  if (unknown.length > 0 || whens.some((w) => w > latest.when)) {
    throw new SchemaVersionError(
      `The database's dmm schema is newer than this version of dmm: it has ${whens.length} dmm migration(s), including ${unknown.length} this version does not know (this version ends at "${latest.tag}"). Upgrade dmm in every process that opens this database.`,
    );
  }
  if (whens.length < expected.length) {
    const missing = expected.filter((e) => !whens.includes(e.when)).map((e) => e.tag);
    throw new SchemaVersionError(
      `The database's dmm schema is older than this version of dmm: ${missing.length} migration(s) are not applied (${missing.join(", ")}). Run "npx dmm migrate" (or call migrate() from "dmm"), or pass { migrate: true } to open().`,
    );
  }
}
