/**
 * The observer (the seed's `Observe`): listens to the fleet's periodic reports and notifies a
 * player's materializer only when the reported song differs from the one in its cache (and the
 * report is newer than the cache's observation). Reports that agree with the cache cost one read
 * and nothing else; a player someone switched by hand gets a run that puts the desired song back.
 */
import type { Bucket, Logger } from "dmm";
import { Music } from "./music.js";
import type { PlayerReport } from "./fleet.js";

/** A running observer. */
export interface Observer {
  /** Reports received and notifies sent so far. */
  readonly counters: { reports: number; notified: number };
  /** Stops listening; resolves when the last report is handled. */
  stop(): Promise<void>;
}

/**
 * Subscribes to `${fleetUrl}/reports` (server-sent events) and compares each report with the
 * caches of the bucket's `music` matters. Reconnects after a second when the stream breaks.
 */
export function startObserver(bucket: Bucket, fleetUrl: string, log: Logger): Observer {
  const controller = new AbortController();
  const counters = { reports: 0, notified: 0 };

  const handle = async (reports: PlayerReport[]) => {
    counters.reports++;
    const cached = new Map<string, { song?: unknown; seenAt?: unknown }>();
    for (const m of await bucket.matters({ kind: "music", limit: 100_000 })) cached.set(m.identity, m.cache);
    const changed = reports.filter((r) => {
      const c = cached.get(r.id);
      // Players without a matter are not ours; a cache that never saw the player counts as
      // "don't know" (its first run is on its way); a report older than the cache's own
      // observation is stale news.
      if (!c || c.song === undefined) return false;
      return c.song !== r.song && r.at > (typeof c.seenAt === "number" ? c.seenAt : 0);
    });
    if (changed.length === 0) return;
    await bucket.notify(changed.map((r) => Object.assign(new Music(), { playerId: r.id, song: r.song, seenAt: r.at })));
    counters.notified += changed.length;
    log.info("observer:notify", { players: changed.map((r) => r.id), songs: changed.map((r) => r.song) });
  };

  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const res = await fetch(`${fleetUrl}/reports`, { signal: controller.signal });
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        let buffer = "";
        for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
          buffer += chunk;
          let end: number;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = event.split("\n").find((l) => l.startsWith("data: "));
            if (data) await handle(JSON.parse(data.slice(6)) as PlayerReport[]);
          }
        }
      } catch (err) {
        if (controller.signal.aborted) return;
        log.warn("observer:error", { err: (err as Error).message });
      }
      // Reconnect after a second; stop() cuts the wait short.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1_000);
        controller.signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
      });
    }
  };
  const running = run();

  return {
    counters,
    async stop() {
      controller.abort();
      await running.catch(() => {});
    },
  };
}
