/**
 * What every `dmm` command shares: exit codes, argument parsing with usage errors, the output
 * streams and the database connection.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ConnectionError, DmmError, SchemaVersionError } from "../errors.js";
import { openDatabase, redact, type Database } from "../store/db.js";

/**
 * Exit codes scripts can rely on. They are part of the CLI's contract: documented in
 * `dmm --help` and the README, and never reused for something else.
 */
export const EXIT = {
  /** The command did what was asked. */
  ok: 0,
  /** It could not: Postgres unreachable, a SQL error, a matter that does not exist. */
  failure: 1,
  /** The command line is wrong: unknown command or option, missing or invalid argument. */
  usage: 2,
  /** The database's dmm schema is missing, older or newer than this version of dmm. */
  schema: 3,
} as const;

/** A command-line mistake; reported with the command's usage and exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** A failure the command explains itself (exit code 1), without a stack trace. */
export class CommandError extends Error {
  override readonly name = "CommandError";
}

/** Where a command writes; tests and embedders can capture it. */
export interface Io {
  out: { write(text: string): unknown; isTTY?: boolean; columns?: number };
  err: { write(text: string): unknown };
  env: Record<string, string | undefined>;
  /** Aborted on Ctrl-C (SIGINT) or SIGTERM: long-running commands (`status --watch`) stop. */
  signal: AbortSignal;
}

/** The default database when neither `--database` nor `DATABASE_URL` is given. */
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test";

/** `--database` / `-d`, shared by every command that talks to Postgres. */
export const DATABASE_OPTION = {
  database: { type: "string", short: "d" },
} as const satisfies ParseArgsConfig["options"];

/** The help line of `--database`, aligned with the other options' descriptions (column 26). */
export const DATABASE_HELP = `  -d, --database URL     Postgres URL. Defaults to $DATABASE_URL, else
                         ${DEFAULT_DATABASE_URL}.`;

/** `--help` / `-h`, accepted by every command. */
export const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const satisfies ParseArgsConfig["options"];

type Options = NonNullable<ParseArgsConfig["options"]>;
type Parsed<O extends Options> = ReturnType<
  typeof parseArgs<{ args: string[]; options: O; allowPositionals: true; allowNegative: true; strict: true }>
>;

/**
 * Parses `args` strictly: unknown options, missing values and stray positionals become
 * `UsageError`s that name the offender.
 */
export function parse<O extends Options>(
  args: string[],
  options: O,
  positionals: { min: number; max: number },
): Parsed<O> & { help: boolean } {
  let parsed: Parsed<O>;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, allowNegative: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const help = (parsed.values as { help?: boolean }).help === true;
  if (!help) {
    const n = parsed.positionals.length;
    if (n < positionals.min) throw new UsageError(`Missing argument${positionals.min - n > 1 ? "s" : ""}.`);
    if (n > positionals.max) throw new UsageError(`Unexpected argument ${JSON.stringify(parsed.positionals[positionals.max])}.`);
  }
  return { ...parsed, help };
}

/** The database URL from `--database`, else `DATABASE_URL`, else the default. */
export function databaseUrl(flag: string | undefined, env: Io["env"]): string {
  const url = flag ?? env.DATABASE_URL ?? DEFAULT_DATABASE_URL;
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new UsageError(`The database URL ${JSON.stringify(redact(url))} is not a postgres:// URL.`);
  }
  return url;
}

const DATABASE_URL_KEY = "dmmDatabaseUrl";

/** Opens a small pool for one command; the caller closes it. */
export function connect(url: string): Database {
  return openDatabase(url, { poolSize: 2, applicationName: "dmm:cli" });
}

/** Runs `fn` with a database connection, always closing it. */
export async function withDatabase<T>(url: string, fn: (db: Database) => Promise<T>): Promise<T> {
  const db = connect(url);
  try {
    return await fn(db);
  } catch (err) {
    // describeFailure names the server the command actually used (a flag may override the env).
    if (err !== null && typeof err === "object" && !(DATABASE_URL_KEY in err)) Object.assign(err, { [DATABASE_URL_KEY]: url });
    throw err;
  } finally {
    await db.close().catch(() => {});
  }
}

/**
 * Maps an error to its exit code and the sentence to print. Postgres errors keep their SQLSTATE
 * so that the operator can look them up.
 */
export function describeFailure(err: unknown, fallbackUrl?: string): { code: number; message: string } {
  const url = (err as Record<string, unknown> | null)?.[DATABASE_URL_KEY] as string | undefined ?? fallbackUrl;
  if (err instanceof UsageError) return { code: EXIT.usage, message: err.message };
  if (err instanceof SchemaVersionError) return { code: EXIT.schema, message: err.message };
  if (err instanceof CommandError) return { code: EXIT.failure, message: err.message };
  const cause = err instanceof ConnectionError ? (err.cause ?? err) : err;
  const code = (cause as { code?: string } | null)?.code;
  const where = url ? ` at ${redact(url)}` : "";
  if (err instanceof ConnectionError || (code && /^(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|CONNECT_TIMEOUT|ECONNRESET)$/.test(code))) {
    return {
      code: EXIT.failure,
      message: `Could not reach Postgres${where} (${code ?? "connection failed"}). Check that it is running and that --database or DATABASE_URL points at it.`,
    };
  }
  if (err instanceof DmmError) return { code: EXIT.failure, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  if (code && /^[0-9A-Z]{5}$/.test(code)) return { code: EXIT.failure, message: `Postgres refused${where}: ${message} (SQLSTATE ${code}).` };
  return { code: EXIT.failure, message };
}
