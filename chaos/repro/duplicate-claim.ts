/**
 * Reproduction: one claim statement asked for the same identity twice (two tokens of one
 * identity in a worker's local queue, e.g. a token redelivered after its ack wait next to the
 * original, or a dead-worker recovery injected next to a token) reports BOTH as claimed, with
 * the same lease epoch: the worker then runs the matter twice at once under one lease, and
 * both runs pass every fence (same owner, same epoch). Found by `npm run chaos` as ledger rows
 * with equal epochs that overlap (checks `epoch-order` and `overlap`).
 *
 * Cause (src/store/claim.ts, claimKeys since "Batched DML as primary-key lookups"): the result
 * joins the claimed rows back to the requested keys by identity
 * (`left join claimed c on c.identity = w.identity`), so every duplicate key gets the claim; the
 * statement before joined by the key's ordinal. Expected: one `claimed`, the duplicate `idle`.
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/duplicate-claim.ts` (own private Postgres).
 */
import { open } from "dmm";
import { claimKeys } from "../../src/store/claim.js";
import { startPostgresServer } from "../lib/index.js";

class Unit {
  id = "";
  identity() {
    return this.id;
  }
  materialize() {}
}

const pg = await startPostgresServer();
try {
  const bucket = await open("repro", { database: pg.url, migrate: true });
  bucket.register("unit", Unit);
  await bucket.notify(Object.assign(new Unit(), { id: "a" }));
  const db = (bucket as unknown as { db: { db: Parameters<typeof claimKeys>[0] } }).db.db;
  const statuses = await claimKeys(db, "repro", "worker-1", 30_000, "unit", ["a", "a"]);
  console.log(JSON.stringify(statuses.map((s) => (s.status === "claimed" ? { status: s.status, epoch: s.matter.epoch } : s))));
  const claimed = statuses.filter((s) => s.status === "claimed").length;
  console.log(claimed > 1 ? `BUG: ${claimed} claims of one matter under one epoch` : "ok: one claim");
  await bucket.close();
} finally {
  await pg.dispose();
}
