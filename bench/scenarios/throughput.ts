/**
 * `throughput`: distinct keys, trivial work. `per_s` drains a full backlog, `e2e_per_s`
 * enqueues while the workers run (each on a fresh database). Variants `1proc` and `2proc`
 * (two worker processes with 16 concurrent runs each).
 */
import { measureDrain, measureEndToEnd, type Scenario } from "./common.js";

/** The throughput scenario. */
export const throughput: Scenario = {
  name: "throughput",
  variants(env) {
    return [1, 2].map((procs) => ({
      name: `${procs}proc`,
      repeats: env.sizes.throughput_repeats,
      timeoutMs: env.mode === "quick" ? 120_000 : 900_000,
      async measure(system, env, scope) {
        const jobs = env.sizes.throughput_jobs;
        const drain = await measureDrain(system, env, scope, { scenario: "throughput", procs, jobs });
        const e2e = await measureEndToEnd(system, env, scope, { scenario: "throughput", procs, jobs });
        return {
          metrics: { per_s: Math.round(drain.rate), e2e_per_s: Math.round(e2e.rate) },
          detail: { procs, concurrency_per_proc: env.sizes.concurrency, drain: drain.detail, e2e: e2e.detail },
        };
      },
    }));
  },
};
