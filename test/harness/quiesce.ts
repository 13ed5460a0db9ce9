/**
 * Quiescence: wait until a bucket has nothing left to do (no outbox rows, no tokens in its
 * stream, no leases, no runs in flight), so a test can count runs and know no more will come.
 */
import type postgres from "postgres";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import type { Bucket } from "../../src/bucket.js";
import { NATS_URL } from "./env.js";
import { waitFor } from "./wait.js";

/** Waits until nothing in `bucket`'s namespace is queued, leased or dirty-and-due. */
export async function quiesce(bucket: Bucket, sql: postgres.Sql, timeoutMs = 30_000): Promise<void> {
  const nc = bucket.dispatch === "nats" ? await connect({ servers: NATS_URL }) : null;
  const jsm = nc ? await jetstreamManager(nc) : null;
  try {
    let stableSince = 0;
    await waitFor(
      `bucket ${bucket.namespace} to go quiet`,
      async () => {
        const [row] = await sql`
          select
            (select count(*)::int from dmm.dmm_outbox where namespace = ${bucket.namespace}) as outbox,
            (select count(*)::int from dmm.dmm_matter where namespace = ${bucket.namespace}
               and (lease_owner is not null
                    or (generation > observed_generation and not parked and (due_at is null or due_at <= now()))
                    or due_at <= now())) as busy`;
        let tokens = 0;
        if (jsm) tokens = (await jsm.streams.info(`dmm_${bucket.namespace}`)).state.messages;
        const quiet = row!.outbox === 0 && row!.busy === 0 && tokens === 0;
        if (!quiet) {
          stableSince = 0;
          return false;
        }
        // Quiet twice, 50 ms apart: a finish committing between the two reads shows up.
        if (stableSince === 0) stableSince = Date.now();
        return Date.now() - stableSince >= 50;
      },
      { timeoutMs },
    );
  } finally {
    await nc?.close();
  }
}
