/** The `dmm` command line: dispatches to one command and turns its outcome into an exit code. */
import { DATABASE_HELP, EXIT, UsageError, describeFailure, type Io } from "./common.js";
import { migrateCommand } from "./migrate.js";
import { sqlCommand } from "./sql.js";
import { statusCommand } from "./status.js";
import { touchCommand } from "./touch.js";
import { packageVersion } from "./version.js";

/** The text of `dmm --help`. */
export const MAIN_HELP = `Usage: dmm <command> [options]

The command line of dmm (Durable Materialization Machine), for any app that uses it.

Commands:
  migrate   Install or upgrade dmm's schema (tables, trigger) in the database.
  status    List a namespace's matters, or show one identity in detail.
  touch     Request a run of one matter by kind and identity, keeping its cache.
  sql       Print dmm's schema SQL, for apps that keep a single migration history.
  help      Show this help, or "dmm help <command>" for a command's.

Run "dmm <command> --help" for a command's options. Common options:
${DATABASE_HELP}
  -n, --namespace NAME   The bucket's namespace (status, touch). Defaults to $DMM_NAMESPACE.

Exit codes (every command):
  0  ok
  1  failure: Postgres unreachable, a SQL error, a matter that does not exist
  2  usage error: unknown command or option, missing or invalid argument
  3  schema version mismatch: dmm's schema is missing, older or newer than this version
     (run "dmm migrate", or upgrade dmm)
`;

const COMMANDS: Record<string, (args: string[], io: Io) => Promise<number>> = {
  migrate: migrateCommand,
  status: statusCommand,
  touch: touchCommand,
  sql: sqlCommand,
};

/** Runs `dmm` with `argv` (without node and the script) and returns the exit code. */
export async function runCli(argv: string[], io: Io): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    const topic = command === "help" ? rest[0] : undefined;
    if (topic !== undefined && COMMANDS[topic]) return runCli([topic, "--help"], io);
    if (topic !== undefined) return usageFailure(io, new UsageError(`Unknown command ${JSON.stringify(topic)}.`), MAIN_HELP);
    io.out.write(MAIN_HELP);
    // `dmm` alone is a usage error for scripts; asking for help is not.
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  if (command === "--version" || command === "-v" || command === "version") {
    io.out.write(`${packageVersion()}\n`);
    return EXIT.ok;
  }
  const run = COMMANDS[command];
  if (!run) return usageFailure(io, new UsageError(`Unknown command ${JSON.stringify(command)}.`), MAIN_HELP);
  try {
    return await run(rest, io);
  } catch (err) {
    if (err instanceof UsageError) return usageFailure(io, err, `Run "dmm ${command} --help" for its usage.\n`);
    const { code, message } = describeFailure(err, io.env.DATABASE_URL);
    io.err.write(`dmm ${command}: ${message}\n`);
    if (code === EXIT.failure && process.env.DMM_DEBUG && err instanceof Error && err.stack) io.err.write(`${err.stack}\n`);
    return code;
  }
}

function usageFailure(io: Io, err: UsageError, help: string): number {
  io.err.write(`dmm: ${err.message}\n${help}`);
  return EXIT.usage;
}
