/** `dmm migrate`: installs or upgrades dmm's schema in a database. */
import { applyMigrations, checkSchemaVersion, expectedMigrations } from "../store/migrate.js";
import { DATABASE_HELP, DATABASE_OPTION, EXIT, HELP_OPTION, databaseUrl, parse, withDatabase, type Io } from "./common.js";

/** The text of `dmm migrate --help`. */
export const MIGRATE_HELP = `Usage: dmm migrate [options]

Applies dmm's migrations (its tables, the outbox trigger and functions, all in the Postgres
schema "dmm", recorded in dmm.dmm_migrations). Safe to run repeatedly and from many processes
at once: migrators take an advisory lock and skip what is applied.

Options:
${DATABASE_HELP}
      --check            Apply nothing; exit 0 when the schema is current, 3 when it is not.
  -h, --help             Show this help.

Exit codes: 0 current (or brought up to date), 1 failure, 2 usage error,
3 schema version mismatch (the database has dmm migrations this version does not know,
or --check found missing ones).
`;

/** Runs `dmm migrate` with `args` (after the command name); returns the exit code. */
export async function migrateCommand(args: string[], io: Io): Promise<number> {
  const { values, help } = parse(args, { ...DATABASE_OPTION, ...HELP_OPTION, check: { type: "boolean" } }, { min: 0, max: 0 });
  if (help) {
    io.out.write(MIGRATE_HELP);
    return EXIT.ok;
  }
  const url = databaseUrl(values.database, io.env);
  const latest = expectedMigrations().at(-1)!.tag;
  return withDatabase(url, async (db) => {
    if (values.check) {
      await checkSchemaVersion(db.client);
      io.out.write(`The dmm schema is current (${latest}).\n`);
      return EXIT.ok;
    }
    const { applied } = await applyMigrations(db.client);
    // A database migrated by a newer dmm gets nothing applied and must still be refused.
    await checkSchemaVersion(db.client);
    io.out.write(
      applied > 0
        ? `Applied ${applied} dmm migration${applied === 1 ? "" : "s"}; the dmm schema is at ${latest}.\n`
        : `The dmm schema is already current (${latest}); nothing to apply.\n`,
    );
    return EXIT.ok;
  });
}
