/**
 * The example's materializer: makes each music player play the song its `music_players` row
 * asks for. Both patterns of the seed:
 * - pull: every run asks the player what it plays, and posts `play` only when that differs
 *   from the desired song (idempotent: a run that repeats changes nothing);
 * - observe: the observer (observer.ts) notifies with a player's reported song when it differs
 *   from this cache, so drift is noticed without polling every player.
 */
import { eq } from "drizzle-orm";
import { RetryAfterError, TerminalError, type Context, type Materializer } from "dmm";
import { musicPlayers } from "./schema.js";

/** Talks to the player fleet over HTTP. */
export class FleetClient {
  constructor(readonly url: string) {}

  /** What the player plays now (null: nothing), and when the fleet read that. */
  async currentSong(playerId: string, signal?: AbortSignal): Promise<{ song: string | null; at: number }> {
    return (await this.#request("GET", playerId, "song", undefined, signal)) as { song: string | null; at: number };
  }

  /** Makes the player play `song`; returns when the fleet applied it. */
  async play(playerId: string, song: string, signal?: AbortSignal): Promise<{ at: number }> {
    return (await this.#request("POST", playerId, "play", { song }, signal)) as { at: number };
  }

  async #request(method: string, playerId: string, action: string, body: unknown, signal?: AbortSignal): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(`${this.url}/players/${encodeURIComponent(playerId)}/${action}`, {
        method,
        signal,
        headers: body === undefined ? undefined : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new Error(`${method} ${action}: the player fleet at ${this.url} is unreachable (${(err as Error).message})`);
    }
    const text = await res.text();
    if (res.status === 429) {
      // The player asks for a pause: retry exactly then, not on the exponential backoff.
      const seconds = Number(res.headers.get("retry-after") ?? "1");
      throw new RetryAfterError(`${method} ${action}: rate-limited (HTTP 429), retry after ${seconds}s`, seconds * 1000);
    }
    if (!res.ok) {
      const reason = (JSON.parse(text || "{}") as { error?: string }).error ?? text;
      throw new Error(`${method} ${action} failed (HTTP ${res.status}: ${reason})`);
    }
    return JSON.parse(text) as unknown;
  }
}

/**
 * One music player. Its fields are its cache: `playerId` (the identity), `song`, what the player
 * was last seen playing, by a run (pulled) or by the observer (reported), and `seenAt`, when the
 * fleet read that. The desired song is not cached: each run reads it from `music_players`, the
 * app's truth.
 */
export class Music implements Materializer {
  playerId = "";
  /** The song the player was last seen playing; null when silent, absent before the first look. */
  song?: string | null;
  /**
   * The fleet's time of that observation. The observer ignores reports older than it, so a
   * report taken just before a run's `play` does not undo what the run just saw.
   */
  seenAt?: number;

  /** The fleet this process talks to; set once at startup (dmm constructs Music with no arguments). */
  static fleet: FleetClient | undefined;

  identity(): string {
    return this.playerId;
  }

  async materialize(ctx: Context): Promise<void> {
    const fleet = Music.fleet;
    if (!fleet) throw new Error("Music.fleet is not set: start the fleet client before the workers");
    // Read the desired song through ctx.transaction: a lease-checked read of the app's own table.
    const rows: { desiredSong: string }[] = await ctx.transaction(async (tx) =>
      tx.select({ desiredSong: musicPlayers.desiredSong }).from(musicPlayers).where(eq(musicPlayers.id, this.playerId)),
    );
    const row = rows[0];
    if (!row) throw new TerminalError(`player ${this.playerId} is not in music_players (deleted?); nothing to play`);
    const seen = await fleet.currentSong(this.playerId, ctx.signal);
    this.song = seen.song;
    this.seenAt = seen.at;
    if (this.song === row.desiredSong) return;
    const played = await fleet.play(this.playerId, row.desiredSong, ctx.signal);
    ctx.log.info("music:play", { song: row.desiredSong, was: this.song });
    this.song = row.desiredSong;
    this.seenAt = played.at;
  }
}
