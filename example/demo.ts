/**
 * `npm run demo`: the example end to end in one process, with zero configuration.
 *
 * Without DATABASE_URL it starts an embedded Postgres 15 (temp dir, free port, removed at exit);
 * without NATS_URL it uses Postgres-only dispatch. With them set it uses those servers (and
 * JetStream dispatch), in the namespace `demo`. It then creates a handful of players against a
 * flaky simulated fleet and shows them converging live; someone presses a button on one player
 * (the observer notices the drift and the materializer puts the song back); one player gets a
 * new desired song; finally it prints the debug table and exits 0 (1 if anything failed to
 * converge within a minute).
 */
import { eq } from "drizzle-orm";
import { v7 as uuidv7 } from "uuid";
import { renderStatusList, useColor, type MatterView } from "dmm";
import { openApp, type App } from "./app.js";
import { startEmbeddedPostgres, type EmbeddedDatabase } from "./embedded.js";
import { SONGS, startFleet, type Fleet } from "./fleet.js";
import { FleetClient, Music } from "./music.js";
import { startObserver, type Observer } from "./observer.js";
import { musicPlayers } from "./schema.js";
import { onStopSignals } from "./signals.js";

const PLAYERS = 5;
const PHASE_TIMEOUT_MS = 60_000;
const started = Date.now();
const tty = process.stdout.isTTY === true;
const color = useColor(process.stdout);
const paint = (code: string, text: string) => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const say = (text: string) => console.log(`${paint("2", `[${elapsed().padStart(5)}]`)} ${text}`);

interface Player {
  id: string;
  desired: string;
}

async function main(): Promise<number> {
  const stop = new AbortController();
  const unsubscribe = onStopSignals(() => stop.abort());

  let embedded: EmbeddedDatabase | undefined;
  let app: App | undefined;
  let fleet: Fleet | undefined;
  let observer: Observer | undefined;
  try {
    console.log(paint("1", "dmm demo: music players converging on the songs the database asks for"));
    let databaseUrl = process.env.DATABASE_URL;
    if (databaseUrl) {
      say(`database: $DATABASE_URL (${databaseUrl.replace(/:[^:@/]*@/, ":***@")})`);
    } else {
      say("database: no DATABASE_URL, starting an embedded Postgres 15 in a temp dir…");
      const t = Date.now();
      embedded = await startEmbeddedPostgres();
      databaseUrl = embedded.url;
      say(`embedded Postgres ready at ${new URL(databaseUrl).host} in ${((Date.now() - t) / 1000).toFixed(1)}s`);
    }
    const natsUrl = process.env.NATS_URL || undefined;
    app = await openApp({
      databaseUrl,
      natsUrl,
      namespace: "demo",
      // Run failures are shown in the progress table; dmm's own warnings would tear it.
      logLevel: "error",
      tuning: { pollIntervalMs: 200, shutdownGraceMs: 5_000 },
    });
    say(`migrated the app's tables and dmm's schema; dispatch: ${app.bucket.dispatch}${natsUrl ? ` (NATS at ${natsUrl})` : " (Postgres only; set NATS_URL for JetStream)"}`);

    fleet = await startFleet({ latencyMs: 40, failRate: 0.25, reportIntervalMs: 300 });
    Music.fleet = new FleetClient(fleet.url);
    say(`player fleet at ${fleet.url}: 40 ms latency, 25 % of requests fail (503, or 429 + Retry-After)`);
    observer = startObserver(app.bucket, fleet.url, { debug() {}, info() {}, warn() {}, error() {}, child() { return this; } });
    const working = app.music.work({ concurrency: 4, signal: stop.signal });
    working.catch(() => {});

    const players: Player[] = [];
    for (let i = 0; i < PLAYERS; i++) {
      const player = { id: uuidv7(), desired: SONGS[i % SONGS.length]! };
      await app.db.transaction(async (tx) => {
        await tx.insert(musicPlayers).values({ id: player.id, desiredSong: player.desired });
        await app!.bucket.notify(Object.assign(new Music(), { playerId: player.id }), { tx });
      });
      players.push(player);
    }
    say(`created ${PLAYERS} players, each inserted in one transaction with its notify`);
    await converge(app, fleet, players, stop.signal);
    say(paint("32", `all ${PLAYERS} players play their desired song`));

    const pressed = players[2]!;
    say(`someone presses a button on player ${short(pressed.id)}: it now plays "Elevator Muzak"`);
    fleet.press(pressed.id, "Elevator Muzak");
    await converge(app, fleet, players, stop.signal);
    say(paint("32", `the observer saw the drift in a report and notified; the materializer put "${pressed.desired}" back`));

    const changed = players[0]!;
    changed.desired = "A Love Supreme";
    await app.db.transaction(async (tx) => {
      await tx.update(musicPlayers).set({ desiredSong: changed.desired, updatedAt: new Date() }).where(eq(musicPlayers.id, changed.id));
      await app!.bucket.touch(Music, changed.id, { tx });
    });
    say(`set-song: player ${short(changed.id)} should now play "${changed.desired}" (update + touch, one transaction)`);
    await converge(app, fleet, players, stop.signal);
    say(paint("32", `converged again`));

    const ids = new Set(players.map((p) => p.id));
    const matters = (await app.bucket.matters({ kind: "music" })).filter((m) => ids.has(m.identity));
    console.log("");
    console.log(paint("1", "npm run example -- debug (this demo's players):"));
    console.log(renderStatusList(matters, { color }));
    console.log("");
    const s = app.bucket.stats();
    say(
      `${s.runs} runs: ${s.succeeded} ok, ${s.failed} failed and retried; the observer notified ${observer.counters.notified} time(s); fleet: ${fleet.counters.failures} of ${fleet.counters.requests} requests failed`,
    );
    return 0;
  } catch (err) {
    if (stop.signal.aborted) {
      console.error("\ninterrupted");
      return 130;
    }
    console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    await observer?.stop();
    await app?.close().catch((err) => console.error(`closing the bucket: ${(err as Error).message}`));
    await fleet?.close();
    if (embedded) {
      await embedded.stop();
      say("embedded Postgres stopped and its temp dir removed");
    }
    unsubscribe();
    say(`demo finished in ${elapsed()}`);
  }
}

/**
 * Shows the players' progress until every one is `ok`, its cache agrees with the fleet, and the
 * fleet plays the desired song. On a terminal the table repaints in place; piped, each change
 * of a player prints one line.
 */
async function converge(app: App, fleet: Fleet, players: Player[], signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + PHASE_TIMEOUT_MS;
  let painted = 0;
  const last = new Map<string, string>();
  for (;;) {
    if (signal.aborted) throw new Error("interrupted");
    const byId = new Map<string, MatterView>((await app.bucket.matters({ kind: "music" })).map((m) => [m.identity, m]));
    const playing = new Map(fleet.snapshot().map((r) => [r.id, r.song]));
    const lines: string[] = [];
    let done = 0;
    for (const p of players) {
      const m = byId.get(p.id);
      const plays = playing.get(p.id) ?? null;
      const state = m?.state ?? "pending";
      const ok = state === "ok" && plays === p.desired && m?.cache.song === p.desired;
      if (ok) done++;
      const head = `player ${short(p.id)}  wants ${quote(p.desired).padEnd(18)} plays ${quote(plays).padEnd(18)} ${stateText(state)}${m && m.attempts > 0 ? ` (attempt ${m.attempts})` : ""}`;
      // A repainted line must not wrap, or the cursor-up count would be off.
      const room = tty ? (process.stdout.columns || 100) - visible(head).length - 5 : 80;
      const error = m?.lastError && state === "failing" && room > 10 ? `  ${paint("31", firstLine(m.lastError, room))}` : "";
      const line = `${head}${error}`;
      lines.push(line);
      if (!tty && last.get(p.id) !== line) {
        last.set(p.id, line);
        say(line);
      }
    }
    if (tty) {
      if (painted > 0) process.stdout.write(`\x1b[${painted}A`);
      for (const line of lines) process.stdout.write(`\x1b[2K  ${line}\n`);
      painted = lines.length;
    }
    if (done === players.length) return;
    if (Date.now() > deadline) throw new Error(`players did not converge within ${PHASE_TIMEOUT_MS / 1000}s (${done} of ${players.length} did)`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

function stateText(state: string): string {
  const code = { ok: "32", pending: "33", running: "36", failing: "31", parked: "35" }[state] ?? "0";
  return paint(code, state.padEnd(7));
}

function short(id: string): string {
  return `…${id.slice(-8)}`;
}

function quote(song: string | null | undefined): string {
  return song ? `"${song}"` : "-";
}

function firstLine(text: string, room: number): string {
  const line = text.split("\n", 1)[0]!;
  return line.length > room ? `${line.slice(0, room - 1)}…` : line;
}

function visible(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, "");
}

process.exitCode = await main();
