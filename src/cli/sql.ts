/**
 * `dmm sql`: dmm's schema as one SQL script, for teams that keep a single migration history
 * (dbmate, Flyway, a hand-written drizzle-kit `--custom` migration) instead of letting dmm apply
 * its own.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { MIGRATIONS_FOLDER, MIGRATIONS_SCHEMA, MIGRATIONS_TABLE, expectedMigrations } from "../store/migrate.js";
import { EXIT, HELP_OPTION, UsageError, parse, type Io } from "./common.js";
import { packageVersion } from "./version.js";

/** The text of `dmm sql --help`. */
export const SQL_HELP = `Usage: dmm sql [options]

Prints dmm's schema SQL: its migrations (tables, indexes, the outbox trigger and functions,
all in the Postgres schema "dmm") concatenated in journal order without drizzle's
"--> statement-breakpoint" markers, followed by the rows that record them in
dmm.dmm_migrations, so that open() and "dmm migrate" see the schema as installed.
Needs no database. Put the output in one migration of your own history.

Options:
      --since TAG        Only the migrations after TAG (e.g. 0001_outbox_trigger), for
                         upgrading a database that has everything up to TAG.
      --no-bookkeeping   Leave out the dmm.dmm_migrations rows (then open() refuses the
                         database until "dmm migrate" has recorded them).
  -h, --help             Show this help.

Exit codes: 0 printed, 2 usage error (e.g. an unknown --since tag).
`;

/** The SQL of every migration after `since` (all when undefined), with or without bookkeeping. */
export function schemaSql(options: { since?: string; bookkeeping?: boolean } = {}): string {
  const all = expectedMigrations();
  let start = 0;
  if (options.since !== undefined) {
    const at = all.findIndex((e) => e.tag === options.since);
    if (at < 0) {
      throw new UsageError(`Unknown migration tag ${JSON.stringify(options.since)}; this version has ${all.map((e) => e.tag).join(", ")}.`);
    }
    start = at + 1;
  }
  const chosen = all.slice(start);
  const out: string[] = [
    `-- dmm ${packageVersion()} schema SQL (printed by "dmm sql"${options.since ? ` --since ${options.since}` : ""}).`,
    chosen.length
      ? `-- Migrations: ${chosen.map((e) => e.tag).join(", ")}. Apply in one transaction.`
      : `-- Nothing to apply: ${options.since} is the latest migration of this version.`,
  ];
  for (const entry of chosen) {
    const text = readFileSync(`${MIGRATIONS_FOLDER}/${entry.tag}.sql`, "utf8");
    const statements = text
      .split("--> statement-breakpoint")
      .map((s) => s.trim())
      .filter((s) => s !== "")
      .map((s) => (statementEnds(s) ? s : `${s};`));
    out.push("", `-- ${entry.tag}`, statements.join("\n\n"));
  }
  if (options.bookkeeping !== false && chosen.length > 0) {
    const table = `"${MIGRATIONS_SCHEMA}"."${MIGRATIONS_TABLE}"`;
    // The same table and rows drizzle's migrator writes (sha256 of the file, journal time), so a
    // later `dmm migrate` or open() treats these migrations as applied.
    const rows = chosen.map((e) => {
      const hash = createHash("sha256").update(readFileSync(`${MIGRATIONS_FOLDER}/${e.tag}.sql`)).digest("hex");
      return `  ('${hash}', ${e.when})`;
    });
    out.push(
      "",
      `-- Bookkeeping: record these migrations as applied, as "dmm migrate" would.`,
      `CREATE SCHEMA IF NOT EXISTS "${MIGRATIONS_SCHEMA}";`,
      `CREATE TABLE IF NOT EXISTS ${table} (\n  id SERIAL PRIMARY KEY,\n  hash text NOT NULL,\n  created_at bigint\n);`,
      `INSERT INTO ${table} ("hash", "created_at") VALUES\n${rows.join(",\n")};`,
    );
  }
  return `${out.join("\n")}\n`;
}

/** True when the statement's last line of code ends with ";" (trailing comments ignored). */
function statementEnds(statement: string): boolean {
  const lines = statement.split("\n").filter((l) => !/^\s*--/.test(l) && l.trim() !== "");
  return (lines.at(-1) ?? "").trimEnd().endsWith(";");
}

/** Runs `dmm sql` with `args`; returns the exit code. */
export async function sqlCommand(args: string[], io: Io): Promise<number> {
  const { values, help } = parse(
    args,
    { ...HELP_OPTION, since: { type: "string" }, bookkeeping: { type: "boolean" } },
    { min: 0, max: 0 },
  );
  if (help) {
    io.out.write(SQL_HELP);
    return EXIT.ok;
  }
  io.out.write(schemaSql({ since: values.since, bookkeeping: values.bookkeeping }));
  return EXIT.ok;
}
