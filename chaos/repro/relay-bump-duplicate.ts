/**
 * Reproduction: a notify that lands on an outbox row a dead relay left in flight gets no token
 * of its own. It waits until the row's in-flight time (RELAY_INFLIGHT_MS, 10 s) has passed;
 * then the relay publishes the row again under the same msgID (`<namespace>:<row id>`), which
 * JetStream drops as a duplicate and dmm counts as dispatched, so the row is deleted without a
 * token; only the sweep (no outbox row, dispatched long enough ago) finally enqueues it anew.
 * Found by the chaos run as a matter dirty for ~7 s after the last notify with every worker up
 * (chaos_nats, right after a `relay-kill-blocked-delete`).
 *
 * Steps, with dmm's own relay and sweep statements (src/store/outbox.ts, src/store/sweep.ts)
 * driven by hand:
 * 1. notify `a` (outbox row X, generation 1);
 * 2. a relay round takes X, publishes its token (msgID ns:X, acknowledged) and dies before its
 *    delete (the publish callback throws): X stays, hidden for 10 s;
 * 3. a worker consumes that token and runs generation 1 (simulated: token acked, matter marked
 *    observed);
 * 4. notify `a` again (generation 2): the trigger bumps X; X stays hidden;
 * 5. a relay round every 100 ms and a sweep every second, as workers run them; the script
 *    reports when a token for `a` next exists in the stream.
 * Expected: a token within about a relay round of step 4. Observed: see the output.
 *
 * Fixed by 24dd7ba: every outbox upsert makes a bumped row available at once
 * (`available_at = least(available_at, now())`) and the relay's msgID carries the bump count and
 * the row's creation time (`<namespace>:<row id>:<bumps>:<born>`, src/bucket.ts), so a re-publish
 * after a notify is a new token while a dead relay's plain retry is still dropped as a
 * duplicate. By default the script runs dmm as it is now; `--old` restores the trigger of
 * migration 0001 and the old msgID (`<namespace>:<row id>`) to show the bug.
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/relay-bump-duplicate.ts [--old]` (own
 * private Postgres and nats-server).
 */
import { setTimeout as delay } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { sql } from "drizzle-orm";
import { open } from "dmm";
import { relayOutbox, type OutboxRow } from "../../src/store/outbox.js";
import { sweepMatters } from "../../src/store/sweep.js";
import { startNatsServer, startPostgresServer } from "../lib/index.js";

class Unit {
  id = "";
  identity() {
    return this.id;
  }
  materialize() {}
}

type Db = Parameters<typeof relayOutbox>[0];
interface Internals {
  db: { db: Db };
  tokens: { publish(keys: { kind: string; identity: string; msgId: string }[]): Promise<{ results: string[] }> };
}

const NS = "repro";
const OLD = process.argv.includes("--old");
/** The outbox trigger as migration 0001 created it, before 24dd7ba: a bump left `available_at` alone. */
const OLD_TRIGGER = sql.raw(`
  CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox"() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
    VALUES (NEW."namespace", NEW."kind", NEW."identity")
    ON CONFLICT ("namespace", "kind", "identity") DO UPDATE SET "bumps" = "dmm_outbox"."bumps" + 1;
    PERFORM pg_notify('dmm_outbox', NEW."namespace" || ':' || NEW."kind");
    RETURN NULL;
  END;
  $$`);
const [pg, nats] = await Promise.all([startPostgresServer(), startNatsServer()]);
const nc = await connect({ servers: nats.url });
try {
  const bucket = await open(NS, { database: pg.url, nats: nats.url, migrate: true });
  bucket.register("unit", Unit);
  const { tokens } = bucket as unknown as Internals;
  const db = (bucket as unknown as Internals).db.db;
  const jsm = await jetstreamManager(nc);
  const stream = `dmm_${NS}`;
  const tokensInStream = async () => (await jsm.streams.info(stream)).state.messages;
  const outbox = async () =>
    // Every column (the relay's in-flight mark moved from available_at to relay_until in fd224d3).
    ((await db.execute(sql`select to_jsonb(o) - 'namespace' - 'kind' - 'identity' - 'created_at' as row from dmm.dmm_outbox o where namespace = ${NS}`)) as unknown as { row: Record<string, unknown> }[]).map(
      (r) => r.row,
    );
  // The relay's msgID, as src/bucket.ts builds it (before 24dd7ba: namespace and row id only).
  const msgId = (r: OutboxRow) => (OLD ? `${NS}:${r.id}` : `${NS}:${r.id}:${r.bumps}:${r.born}`);
  const publish = async (batch: OutboxRow[]) => (await tokens.publish(batch.map((r) => ({ kind: r.kind, identity: r.identity, msgId: msgId(r) })))).results as ("ok" | "busy" | "error")[];
  if (OLD) await db.execute(OLD_TRIGGER);
  console.log(OLD ? "dmm before 24dd7ba (old trigger and msgID)" : "dmm as it is");

  await bucket.notify(Object.assign(new Unit(), { id: "a" }));
  const [row] = await outbox();
  console.log(`1. notify a: outbox row ${String(row!.id)}`);

  await relayOutbox(db, NS, 10, async (batch) => {
    await publish(batch);
    throw new Error("the relay dies after the PubAck, before its delete");
  }).catch(() => {});
  console.log(`2. relay published and died: ${await tokensInStream()} token(s) in the stream; outbox ${JSON.stringify(await outbox())}`);

  await jsm.streams.purge(stream);
  await db.execute(sql`update dmm.dmm_matter set observed_generation = generation where namespace = ${NS}`);
  console.log(`3. its token consumed and generation 1 run: ${await tokensInStream()} token(s)`);

  const notifiedAt = Date.now();
  await bucket.notify(Object.assign(new Unit(), { id: "a" }));
  console.log(`4. notify a again (generation 2): outbox ${JSON.stringify(await outbox())}`);

  let tokenAfterMs: number | null = null;
  let duplicateDrops = 0;
  let lastSweep = 0;
  while (Date.now() - notifiedAt < 15_000) {
    const before = await tokensInStream();
    const r = await relayOutbox(db, NS, 10, publish);
    if (r.dispatched > 0 && (await tokensInStream()) === before) {
      duplicateDrops++;
      console.log(`   +${Date.now() - notifiedAt} ms: the relay published the row again; JetStream kept no new token (duplicate msgID), the row was deleted`);
    }
    if (Date.now() - lastSweep >= 1_000) {
      lastSweep = Date.now();
      const n = await sweepMatters(db, NS, 1_000, 100);
      if (n > 0) console.log(`   +${Date.now() - notifiedAt} ms: the sweep enqueued ${n} matter(s) anew`);
    }
    if ((await tokensInStream()) > 0) {
      tokenAfterMs = Date.now() - notifiedAt;
      break;
    }
    await delay(100);
  }
  console.log(
    tokenAfterMs === null
      ? "5. no token for generation 2 within 15 s"
      : `5. a token for generation 2 exists ${tokenAfterMs} ms after its notify${tokenAfterMs > 2_000 ? " (BUG: the notify's wakeup waited for the dead relay's in-flight time" + (duplicateDrops > 0 ? ", was dropped as a duplicate," : "") + " and came from the sweep)" : ""}`,
  );
  await bucket.close();
} finally {
  await nc.close();
  await Promise.all([nats.dispose(), pg.dispose()]);
}
