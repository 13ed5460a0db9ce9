/**
 * `scale`: drain throughput (one process) with `scale_large` versus `scale_small` idle rows
 * already in the system's tables. What an idle row is depends on the system (its adapter's
 * `seedExisting` and notes): for dmm a settled matter, for the job queues a job scheduled far
 * in the future, which sits in the same table and indexes the fetch query has to skip.
 * Seeding is followed by `VACUUM ANALYZE` for every system (autovacuum may be off).
 */
import type { Result } from "../lib/report.js";
import { round } from "../lib/stats.js";
import { wallNow } from "../lib/util.js";
import { measureDrain, round1, type Scenario, type Variant } from "./common.js";

/** The scale scenario. */
export const scale: Scenario = {
  name: "scale",
  variants(env) {
    const sizes = [env.sizes.scale_small, env.sizes.scale_large];
    return sizes.map((existing): Variant => ({
      name: `existing_${existing}`,
      repeats: env.sizes.scale_repeats,
      timeoutMs: env.mode === "quick" ? 240_000 : 1_800_000,
      async measure(system, env, scope) {
        const drained = await measureDrain(system, env, scope, {
          scenario: "scale",
          procs: 1,
          jobs: env.sizes.scale_jobs,
          async beforeEnqueue(target, producer) {
            const t0 = wallNow();
            await producer.seedExisting(existing);
            const t1 = wallNow();
            await env.dbs.vacuumAnalyze(target.database);
            return { existing, seed_s: round1((t1 - t0) / 1000), vacuum_s: round1((wallNow() - t1) / 1000) };
          },
        });
        return { metrics: { per_s: Math.round(drained.rate) }, detail: drained.detail };
      },
    }));
  },
  derive(results) {
    const out: Result[] = [];
    const bySystem = new Map<string, Result[]>();
    for (const r of results) bySystem.set(r.system, [...(bySystem.get(r.system) ?? []), r]);
    for (const [system, rows] of bySystem) {
      const ok = rows.filter((r) => !r.error && r.metrics.per_s !== undefined);
      if (ok.length !== 2) continue;
      // The variant names carry the row counts (a repeated variant's detail is the repeats').
      const existing = (r: Result) => Number(r.variant.slice("existing_".length));
      const [small, large] = [...ok].sort((a, b) => existing(a) - existing(b));
      out.push({
        system,
        scenario: "scale",
        variant: "ratio",
        metrics: { ratio: round(large!.metrics.per_s! / small!.metrics.per_s!, 3) },
        detail: { definition: `per_s with ${existing(large!)} existing rows ÷ per_s with ${existing(small!)} (medians of the repeats)` },
      });
    }
    return out;
  },
};
