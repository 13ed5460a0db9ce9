/**
 * The observer (the seed's `Observe`): listens to the fleet's periodic reports and notifies a
 * player's materializer only when the reported song differs from the one in its cache. Reports
 * that agree with the cache cost one read and nothing else; a player someone switched by hand
 * gets a run that puts the desired song back.
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
    const cached = new Map<string, unknown>();
    for (const m of await bucket.matters({ kind: "music", limit: 100_000 })) cached.set(m.identity, m.cache.song);
    // Players without a matter are not ours; a cache that never saw the player (undefined)
    // counts as "don't know", and its first run is on its way anyway.
    const changed = reports.filter((r) => cached.has(r.id) && cached.get(r.id) !== undefined && cached.get(r.id) !== r.song);
    if (changed.length === 0) return;
    await bucket.notify(changed.map((r) => Object.assign(new Music(), { playerId: r.id, song: r.song })));
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
      await new Promise((r) => setTimeout(r, 1_000));
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
