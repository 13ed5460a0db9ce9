/**
 * A simulated fleet of music players: a small HTTP service on loopback that holds each player's
 * current song. It is the "reality" the example converges to, with the flaws of a real one:
 * latency, failures (503, and 429 with Retry-After) and people pressing buttons on players.
 *
 *   GET  /players/:id/song    → 200 {"song": "…" | null, "at"}          (latency, may fail)
 *   POST /players/:id/play    {"song": "…"} → 200 {"song": "…", "at"}    (latency, may fail)
 *   POST /players/:id/press   {"song": "…"} → 200                        (someone at the player; never fails)
 *   GET  /players             → 200 [{"id", "song", "at"}]                (no latency, never fails)
 *   GET  /reports             → text/event-stream: every reportIntervalMs one "report" event
 *                               with every player's full state [{"id", "song", "at"}]
 *
 * `at` is the fleet's clock (ms since the epoch) when the state was read, so a reader can tell
 * an older observation from a newer one. A player is known from its first request on (a fresh
 * player plays nothing: song null).
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** How the fleet behaves. */
export interface FleetOptions {
  /** Port on 127.0.0.1; 0 picks a free one. Defaults to 0. */
  port?: number;
  /** Delay of every GET song and POST play, ±50 % jitter. Defaults to 50 ms. */
  latencyMs?: number;
  /** Share of GET song and POST play requests that fail, 0 to 1. Defaults to 0.2. */
  failRate?: number;
  /** Time between two pushes of every player's state on /reports. Defaults to 1 000 ms. */
  reportIntervalMs?: number;
  /**
   * Chance per player and report that someone presses a button and the player switches to a
   * random other song (drift the observer must notice). Defaults to 0.
   */
  driftRate?: number;
  /** Random numbers in [0, 1); tests may pin it. Defaults to Math.random. */
  random?: () => number;
}

/** One player's state as the fleet reports it. */
export interface PlayerReport {
  id: string;
  song: string | null;
  /** When the fleet read this state (its clock, ms since the epoch). */
  at: number;
}

/** A running fleet. */
export interface Fleet {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  readonly url: string;
  /** The current song of every known player. */
  snapshot(): PlayerReport[];
  /** Someone at the player switches it to `song` (reality drifts from the database). */
  press(id: string, song: string): void;
  /** Requests served so far, by outcome. */
  readonly counters: { requests: number; failures: number; plays: number; presses: number };
  /** Stops reporting and closes the server (open report streams are ended). */
  close(): Promise<void>;
}

/** Songs the fleet (and the example's `create`) pick from. */
export const SONGS = [
  "So What",
  "Blue in Green",
  "Take Five",
  "Naima",
  "Round Midnight",
  "Giant Steps",
  "Autumn Leaves",
  "Moanin'",
  "Footprints",
  "Cantaloupe Island",
];

/** Starts the fleet on 127.0.0.1. */
export async function startFleet(options: FleetOptions = {}): Promise<Fleet> {
  const latencyMs = options.latencyMs ?? 50;
  const failRate = options.failRate ?? 0.2;
  const reportIntervalMs = options.reportIntervalMs ?? 1_000;
  const driftRate = options.driftRate ?? 0;
  const random = options.random ?? Math.random;
  const players = new Map<string, string | null>();
  const streams = new Set<ServerResponse>();
  const counters = { requests: 0, failures: 0, plays: 0, presses: 0 };

  const known = (id: string) => {
    if (!players.has(id)) players.set(id, null);
  };
  const snapshot = (): PlayerReport[] => {
    const at = Date.now();
    return [...players].map(([id, song]) => ({ id, song, at }));
  };
  const delay = () => new Promise((r) => setTimeout(r, latencyMs * (0.5 + random())));

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? "/", "http://fleet");
      const parts = url.pathname.split("/").filter(Boolean);
      if (req.method === "GET" && url.pathname === "/reports") return openReports(res);
      if (req.method === "GET" && url.pathname === "/players") return send(res, 200, snapshot());
      if (parts[0] !== "players" || parts.length !== 3) return send(res, 404, { error: "not found" });
      const id = decodeURIComponent(parts[1]!);
      const action = `${req.method} ${parts[2]}`;
      if (action === "POST press") {
        const song = await songOf(req);
        known(id);
        players.set(id, song);
        counters.presses++;
        return send(res, 200, { song });
      }
      if (action !== "GET song" && action !== "POST play") return send(res, 404, { error: "not found" });
      const body = action === "POST play" ? await songOf(req) : undefined;
      counters.requests++;
      await delay();
      if (random() < failRate) {
        counters.failures++;
        // One failure in four is a rate limit with a Retry-After, the rest are outages.
        if (random() < 0.25) return send(res, 429, { error: "too many requests" }, { "retry-after": "1" });
        return send(res, 503, { error: "player unreachable" });
      }
      known(id);
      if (action === "POST play") {
        players.set(id, body!);
        counters.plays++;
      }
      return send(res, 200, { song: players.get(id) ?? null, at: Date.now() });
    } catch (err) {
      return send(res, 400, { error: (err as Error).message });
    }
  });

  function openReports(res: ServerResponse) {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
    res.write(": fleet reports\n\n");
    streams.add(res);
    res.on("close", () => streams.delete(res));
  }

  const timer = setInterval(() => {
    for (const [id, song] of players) {
      if (driftRate > 0 && random() < driftRate) {
        const others = SONGS.filter((s) => s !== song);
        players.set(id, others[Math.floor(random() * others.length)]!);
        counters.presses++;
      }
    }
    const data = JSON.stringify(snapshot());
    for (const res of streams) res.write(`event: report\ndata: ${data}\n\n`);
  }, reportIntervalMs);
  timer.unref();

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    snapshot,
    press(id, song) {
      known(id);
      players.set(id, song);
      counters.presses++;
    },
    counters,
    async close() {
      clearInterval(timer);
      for (const res of streams) res.end();
      streams.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

async function songOf(req: IncomingMessage): Promise<string> {
  let text = "";
  for await (const chunk of req) text += chunk;
  const song = (JSON.parse(text || "{}") as { song?: unknown }).song;
  if (typeof song !== "string" || song === "") throw new Error('the body must be {"song": "<non-empty string>"}');
  return song;
}
