/**
 * The example app's command line: `npm run example -- <command>`.
 *
 *   worker               runs the player fleet, the observer and the workers until Ctrl-C
 *   create [--song S]    adds a player (one transaction with its notify); prints its id last
 *   set-song <id> <song> changes a player's desired song (one transaction with the touch)
 *   debug [id]           every matter as a table, or one player in detail; --watch repaints
 *
 * Settings: DATABASE_URL (or --database; default postgres://postgres@127.0.0.1:5432/test).
 * `worker` dispatches through NATS JetStream when NATS_URL (or --nats) is set, else through
 * Postgres only. Every command runs the app's migrations and dmm's migrate() first.
 * Exit codes: 0 ok, 1 failure, 2 usage error.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { and, eq, sql } from "drizzle-orm";
import { v7 as uuidv7 } from "uuid";
import { renderStatusDetail, renderStatusList, useColor, watchStatus, type Logger } from "dmm";
import { dmmMatter } from "dmm/schema";
import { DEFAULT_DATABASE_URL, NAMESPACE, openApp, type App } from "./app.js";
import { SONGS, startFleet } from "./fleet.js";
import { FleetClient, Music } from "./music.js";
import { startObserver } from "./observer.js";
import { musicPlayers } from "./schema.js";
import { onStopSignals } from "./signals.js";

const HELP = `Usage: npm run example -- <command> [options]

Commands:
  worker                 Run the simulated player fleet, the observer and the workers until
                         Ctrl-C (runs in flight finish first; nothing is lost).
  create [--song S]      Add a music player wanting song S (default: a random one), notified
                         in the same transaction. Prints the new player's id as the last line.
  set-song <id> <song>   Change a player's desired song (one transaction with the touch).
  debug [id]             Without id: a table of every matter. With id: everything about that
                         player. --watch repaints every second.

Options of every command:
  --database URL         Postgres. Defaults to $DATABASE_URL, else ${DEFAULT_DATABASE_URL}.
  --namespace NAME       dmm namespace. Defaults to ${NAMESPACE}.
  -h, --help             Show help (also "<command> --help").

Exit codes: 0 ok, 1 failure, 2 usage error.
`;

const WORKER_HELP = `Usage: npm run example -- worker [options]

Starts the player fleet (HTTP on 127.0.0.1), the observer of its reports and the music
workers, and runs until Ctrl-C or SIGTERM. Stopping waits for runs in flight to finish.

Options:
  --nats URL             Dispatch through NATS JetStream. Defaults to $NATS_URL; without
                         either, Postgres-only dispatch.
  --concurrency N        Runs at once in this process. Defaults to 8.
  --latency-ms MS        Fleet latency per request (±50 %). Defaults to $FLEET_LATENCY_MS or 50.
  --fail-rate R          Share of fleet requests that fail (503, or 429 with Retry-After),
                         0 to 1. Defaults to $FLEET_FAIL_RATE or 0.2.
  --report-ms MS         Time between the fleet's reports. Defaults to 1000.
  --drift-rate R         Chance per player and report that someone switches the song by
                         hand (the observer notices). Defaults to 0.
  --fleet-port PORT      Fleet port on 127.0.0.1. Defaults to a free one.
  --database URL, --namespace NAME, -h/--help as for every command.
`;

const CREATE_HELP = `Usage: npm run example -- create [--song S]

Inserts a player into music_players and notifies its materializer in the same transaction.
Prints the new player's id (a UUID v7) as the last line.

Options:
  --song S               The desired song. Defaults to a random one of: ${SONGS.join(", ")}.
  --database URL, --namespace NAME, -h/--help as for every command.
`;

const SET_SONG_HELP = `Usage: npm run example -- set-song <id> <song>

Updates the player's desired song and touches its materializer in the same transaction (the
cache, what the player was last seen playing, is kept).

Options: --database URL, --namespace NAME, -h/--help as for every command.
`;

const DEBUG_HELP = `Usage: npm run example -- debug [id] [options]

Without id: one line per matter (kind, identity, state, generation/observed, attempts, next
due, last error). With id: the player's desired song and everything about its matter (cache
JSON, lease holder and expiry, backoff, full last error). The same views as "dmm status".

Options:
  -w, --watch            Repaint every --interval-ms until Ctrl-C.
  --interval-ms N        Defaults to 1000.
  --color, --no-color    Defaults to colour on a terminal (unless NO_COLOR is set).
  --database URL, --namespace NAME, -h/--help as for every command.
`;

const COMMON = {
  database: { type: "string" },
  namespace: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

class UsageError extends Error {}
class Failure extends Error {}

function parse<O extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: O, positionals: number) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, allowNegative: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (!(parsed.values as { help?: boolean }).help && parsed.positionals.length > positionals) {
    throw new UsageError(`Unexpected argument ${JSON.stringify(parsed.positionals[positionals])}.`);
  }
  return parsed;
}

function settings(values: { database?: string; namespace?: string }, natsUrl?: string) {
  return {
    databaseUrl: values.database ?? process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL,
    namespace: values.namespace ?? NAMESPACE,
    natsUrl: natsUrl || undefined,
  };
}

function number(flag: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`${flag} needs a number from ${min} to ${max}; got ${JSON.stringify(raw)}.`);
  return n;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function playerId(raw: string | undefined): string {
  if (raw === undefined) throw new UsageError("Missing the player id.");
  if (!UUID.test(raw)) throw new UsageError(`${JSON.stringify(raw)} is not a player id (a UUID such as the last line "create" printed).`);
  return raw.toLowerCase();
}

// ---------------------------------------------------------------------------------------------

async function worker(args: string[]): Promise<number> {
  const { values } = parse(
    args,
    {
      nats: { type: "string" },
      concurrency: { type: "string" },
      "latency-ms": { type: "string" },
      "fail-rate": { type: "string" },
      "report-ms": { type: "string" },
      "drift-rate": { type: "string" },
      "fleet-port": { type: "string" },
    },
    0,
  );
  if (values.help) return help(WORKER_HELP);
  const concurrency = number("--concurrency", values.concurrency, 8, 1, 1000);
  const fleetOptions = {
    latencyMs: number("--latency-ms", values["latency-ms"] ?? process.env.FLEET_LATENCY_MS, 50, 0, 60_000),
    failRate: number("--fail-rate", values["fail-rate"] ?? process.env.FLEET_FAIL_RATE, 0.2, 0, 1),
    reportIntervalMs: number("--report-ms", values["report-ms"], 1000, 10, 3_600_000),
    driftRate: number("--drift-rate", values["drift-rate"], 0, 0, 1),
    port: number("--fleet-port", values["fleet-port"], 0, 0, 65535),
  };
  const app = await openApp(settings(values, values.nats ?? process.env.NATS_URL));
  const log = createLog("example");
  const fleet = await startFleet(fleetOptions);
  Music.fleet = new FleetClient(fleet.url);
  console.log(`fleet listening on ${fleet.url} (latency ${fleetOptions.latencyMs} ms, fail rate ${fleetOptions.failRate})`);
  const observer = startObserver(app.bucket, fleet.url, log);
  const stop = new AbortController();
  const unsubscribe = onStopSignals(
    () => {
      console.log("stopping: waiting for runs in flight to finish (Ctrl-C again to force)");
      stop.abort();
    },
    () => {
      console.error("second signal: exiting now (runs in flight are abandoned; their leases expire)");
      process.exit(130);
    },
  );
  const working = app.music.work({ concurrency, signal: stop.signal });
  console.log(
    `worker running: namespace ${app.bucket.namespace}, dispatch ${app.bucket.dispatch}, concurrency ${concurrency}. Ctrl-C stops.`,
  );
  try {
    await working;
  } finally {
    // Order matters: no new notifies, then drain the runs (they still talk to the fleet), then
    // the fleet and the database.
    await observer.stop();
    await app.close();
    const stats = app.bucket.stats();
    await fleet.close();
    unsubscribe();
    console.log(
      `stopped cleanly: ${stats.runs} runs (${stats.succeeded} ok, ${stats.failed} failed, ${stats.parked} parked); observer notified ${observer.counters.notified} time(s)`,
    );
  }
  return 0;
}

async function create(args: string[]): Promise<number> {
  const { values } = parse(args, { song: { type: "string" } }, 0);
  if (values.help) return help(CREATE_HELP);
  if (values.song === "") throw new UsageError("--song needs a non-empty song title.");
  const song = values.song ?? SONGS[Math.floor(Math.random() * SONGS.length)]!;
  const app = await openApp({ ...settings(values), logLevel: "warn" });
  try {
    const id = uuidv7();
    await app.db.transaction(async (tx) => {
      await tx.insert(musicPlayers).values({ id, desiredSong: song });
      // Same transaction: the player and the request to materialize it commit together.
      await app.bucket.notify(Object.assign(new Music(), { playerId: id }), { tx });
    });
    console.log(`created player ${id}, desired song ${JSON.stringify(song)}`);
    console.log(id);
    return 0;
  } finally {
    await app.close();
  }
}

async function setSong(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {}, 2);
  if (values.help) return help(SET_SONG_HELP);
  const id = playerId(positionals[0]);
  const song = positionals[1];
  if (!song) throw new UsageError("Missing the song: set-song <id> <song>.");
  const app = await openApp({ ...settings(values), logLevel: "warn" });
  try {
    const before = await app.db.transaction(async (tx) => {
      const [old] = await tx
        .select({ desiredSong: musicPlayers.desiredSong })
        .from(musicPlayers)
        .where(eq(musicPlayers.id, id))
        .for("update");
      if (!old) return undefined;
      await tx.update(musicPlayers).set({ desiredSong: song, updatedAt: new Date() }).where(eq(musicPlayers.id, id));
      // A touch keeps the cache (what the player was last seen playing) and requests a run.
      await app.bucket.touch(Music, id, { tx });
      return old;
    });
    if (!before) throw new Failure(`No player ${id} in music_players.`);
    console.log(`player ${id}: desired song ${JSON.stringify(song)} (was ${JSON.stringify(before.desiredSong)})`);
    return 0;
  } finally {
    await app.close();
  }
}

async function debug(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { watch: { type: "boolean", short: "w" }, "interval-ms": { type: "string" }, color: { type: "boolean" } },
    1,
  );
  if (values.help) return help(DEBUG_HELP);
  const id = positionals[0] === undefined ? undefined : playerId(positionals[0]);
  const intervalMs = number("--interval-ms", values["interval-ms"], 1000, 100, 3_600_000);
  const app = await openApp({ ...settings(values), logLevel: "warn" });
  const view = () => ({ color: values.color ?? useColor(process.stdout), width: process.stdout.isTTY ? process.stdout.columns : undefined });
  const frame = async (): Promise<string> => {
    if (id === undefined) return renderStatusList(await app.bucket.matters(), view());
    const player = await describePlayer(app, id);
    const matter = await app.bucket.matter(Music, id);
    if (!player && !matter) throw new Failure(`No player ${id} in music_players and no matter for it in namespace ${app.bucket.namespace}.`);
    const head = player
      ? `player ${id}: desired song ${JSON.stringify(player.desiredSong)} (music_players, updated ${player.updatedAt.toISOString()})`
      : `player ${id}: not in music_players`;
    return `${head}\n${matter ? renderStatusDetail(matter, view()) : "no matter yet"}`;
  };
  try {
    if (values.watch) {
      const stop = new AbortController();
      const unsubscribe = onStopSignals(() => stop.abort());
      await watchStatus(frame, { intervalMs, signal: stop.signal });
      unsubscribe();
      return 0;
    }
    console.log(await frame());
    return 0;
  } finally {
    await app.close();
  }
}

/**
 * The app's row joined with dmm's matter: a typed query over the app's table and `dmm/schema`,
 * the way an app builds its own pages on dmm's state.
 */
async function describePlayer(app: App, id: string) {
  const [row] = await app.db
    .select({
      desiredSong: musicPlayers.desiredSong,
      updatedAt: musicPlayers.updatedAt,
      generation: dmmMatter.generation,
      seenSong: sql<string | null>`${dmmMatter.cache} ->> 'song'`,
    })
    .from(musicPlayers)
    .leftJoin(
      dmmMatter,
      and(eq(dmmMatter.namespace, app.bucket.namespace), eq(dmmMatter.kind, "music"), eq(dmmMatter.identity, sql`${musicPlayers.id}::text`)),
    )
    .where(eq(musicPlayers.id, id));
  return row;
}

function help(text: string): number {
  process.stdout.write(text);
  return 0;
}

function createLog(scope: string): Logger {
  const line = (level: string) => (msg: string, fields?: Record<string, unknown>) =>
    (level === "warn" || level === "error" ? console.error : console.log)(
      `${scope} ${level} ${msg}${fields ? ` ${Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}` : ""}`,
    );
  const logger: Logger = { debug: () => {}, info: line("info"), warn: line("warn"), error: line("error"), child: () => logger };
  return logger;
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  worker,
  create,
  "set-song": setSong,
  debug,
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(HELP);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`example: unknown command ${JSON.stringify(command)}.\n${HELP}`);
    return 2;
  }
  try {
    return await run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`example ${command}: ${err.message}\nRun "npm run example -- ${command} --help" for its usage.\n`);
      return 2;
    }
    process.stderr.write(`example ${command}: ${err instanceof Failure ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
