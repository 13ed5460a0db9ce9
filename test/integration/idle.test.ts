/**
 * An idle worker waits for a wake-up (LISTEN, a token, a due time or the poll) instead of asking
 * Postgres again and again. A NULL "next available" time once read as 0 ms made idle workers and
 * relays take every millisecond.
 */
import { describe, expect, it } from "vitest";
import type { BucketInternals } from "../../src/bucket.js";
import type { Context } from "../../src/types.js";
import { MODES } from "../harness/setup.js";
import { useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();

/** How long the worker is watched while it has nothing to do, and its poll interval. */
const IDLE_WINDOW_MS = 1_000;
const POLL_MS = 200;

class Item {
  id = "";
  identity() {
    return this.id;
  }
  async materialize(_ctx: Context) {}
}

describe.each(MODES)("an idle worker with %s dispatch", (mode) => {
  it("asks Postgres for work about once per poll interval, not continuously", async () => {
    const sql = env.sql();
    const database = new URL(env.url).pathname.slice(1);
    // Function call counts for the connections the bucket opens from now on.
    await sql.unsafe(`alter database "${database}" set track_functions = 'pl'`);
    const bucket = await env.open(mode, { pollIntervalMs: POLL_MS });
    const stream = bucket.register("item", Item);
    let runs = 0;
    (bucket as unknown as BucketInternals).onRunEnd = () => void runs++;
    const work = stream.work();
    await bucket.notify(Object.assign(new Item(), { id: "a" }));
    await waitFor("the first run", () => runs === 1);
    const fn = mode === "nats" ? "relay_take" : "take_and_claim";
    const calls = async () => {
      await sql`select pg_stat_clear_snapshot()`;
      const [row] = await sql`select coalesce(sum(calls), 0)::int as n from pg_stat_user_functions
                              where schemaname = 'dmm' and funcname = ${fn}`;
      return row!.n as number;
    };
    // Sampling window: the worker is idle during it; what it asks for meanwhile is the subject.
    await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
    await bucket.close();
    await work;
    // A backend publishes its counters when it exits; wait until the closed pool's have.
    let total = 0;
    await waitFor(`the ${fn} call count`, async () => (total = await calls()) > 0);
    // About one take per wake-up plus one per poll interval; continuous asking would be hundreds.
    expect(total).toBeLessThan(5 + (3 * IDLE_WINDOW_MS) / POLL_MS);
    await sql.unsafe(`alter database "${database}" reset track_functions`);
    await sql.close();
  });
});
