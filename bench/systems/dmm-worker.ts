/**
 * The worker child of both dmm systems: one bucket, one stream of the benchmark kind, whose
 * materializer hands each identity to the harness.
 */
import { open } from "dmm";
import type { StartWorker } from "../lib/system.js";
import { BenchItem, KIND, quiet } from "./dmm.js";

/** Starts a dmm worker in the given dispatch mode. */
export function startDmmWorker(mode: "nats" | "postgres"): StartWorker {
  return async (ctx) => {
    BenchItem.run = (key) => ctx.run(key);
    const bucket = await open(ctx.target.namespace, {
      database: ctx.target.databaseUrl,
      nats: mode === "nats" ? ctx.target.natsUrl : undefined,
      logger: quiet,
    });
    const stream = bucket.register(KIND, BenchItem);
    const work = stream.work({ concurrency: ctx.concurrency });
    await waitUntilWorking(bucket);
    return {
      async stop() {
        await bucket.close();
        await work;
      },
    };
  };
}

/** Resolves once the worker registered its session (so it is taking work). */
async function waitUntilWorking(bucket: unknown): Promise<void> {
  const b = bucket as { workerId(): string | null };
  for (let i = 0; i < 500 && b.workerId() === null; i++) await new Promise((r) => setTimeout(r, 10));
}
