/**
 * The relay's side of the outbox: take available rows with SKIP LOCKED (so many relays share
 * the work), hand them to a publisher, then delete what was dispatched and defer what was not,
 * finding each row again by the row version the take marked.
 */
import { sql } from "drizzle-orm";
import { pgArray, rows, SOFT_COMMIT, type Executor } from "./db.js";

/** An outbox row on its way to becoming a token. */
export interface OutboxRow {
  id: number;
  kind: string;
  identity: string;
  tries: number;
  /** The row's bump count when taken; a changed count means a notify landed meanwhile. */
  bumps: number;
  /** When the row was created, in µs since the epoch (as text): with id and bumps, the token's msgID. */
  born: string;
  /** The row version the take marked (its ctid, as text): where the settle finds the row again. */
  tid: string;
}

/** What the publisher made of one row: dispatched, refused because a token is pending, or failed. */
export type DispatchResult = "ok" | "busy" | "error";

/** Longest wait between retries of a row whose token stays pending, in ms. */
export const MAX_DEFER_MS = 1_000;

/** How long a row taken by a relay stays invisible to other relays while its token is published. */
export const RELAY_INFLIGHT_MS = 10_000;

/**
 * One relay round, with no transaction held across the network: takes up to `limit` available
 * rows (`dmm.relay_take`: hidden from other relays for `RELAY_INFLIGHT_MS`), calls `publish`,
 * then (`dmm.relay_settle`) deletes
 * each dispatched row unless a notify bumped it meanwhile (that one is made available again),
 * and defers refused rows with a capped exponential delay (20 ms, 40 ms, … 1 s). A relay that
 * dies mid-round leaves its rows to reappear after the in-flight time; a row re-published as a
 * token of its own carries the same msgID (row id, bumps, creation time), which JetStream drops
 * as a duplicate, unless a notify bumped the row meanwhile: that makes the row available at once
 * and its msgID new. (Rows re-published in a batch may be grouped differently: a second token,
 * found idle.)
 */
export async function relayOutbox(
  db: Executor,
  namespace: string,
  limit: number,
  publish: (batch: OutboxRow[]) => Promise<DispatchResult[]>,
): Promise<{ taken: number; dispatched: number; deferred: number; more: boolean; nextInMs: number | null }> {
  const taken = await rows<{ id: string | null; kind: string; identity: string; tries: number; bumps: number; born: string; tid: string; more: boolean; next_in_ms: number | null }>(
    db,
    sql`select r.id::text, r.kind, r.identity, r.tries, r.bumps, r.born, r.tid, r.more, r.next_in_ms
        from ${SOFT_COMMIT}, dmm.relay_take(${namespace}, ${limit}::int, ${RELAY_INFLIGHT_MS}::int) r`,
  );
  const batch = taken
    .filter((r) => r.id !== null)
    .map((r) => ({ id: Number(r.id), kind: r.kind, identity: r.identity, tries: r.tries, bumps: r.bumps, born: r.born, tid: r.tid }));
  if (batch.length === 0) {
    const next = taken[0]?.next_in_ms ?? null;
    return { taken: 0, dispatched: 0, deferred: 0, more: false, nextInMs: next === null ? null : Math.max(0, next) };
  }
  const results = await publish(batch);
  const ok = batch.map((_, i) => results[i] === "ok");
  // Arrays, one per field (migration 0017).
  await rows(
    db,
    sql`select s.gone, s.kept from ${SOFT_COMMIT}, dmm.relay_settle(${namespace},
          ${pgArray(batch.map((r) => r.tid))}::tid[], ${pgArray(batch.map((r) => r.id))}::bigint[],
          ${pgArray(batch.map((r) => r.bumps))}::integer[], ${pgArray(ok)}::boolean[],
          ${pgArray(batch.map((r) => Math.min(MAX_DEFER_MS, 20 * 2 ** Math.min(r.tries, 10))))}::double precision[]) s`,
  );
  const dispatched = ok.filter(Boolean).length;
  return { taken: batch.length, dispatched, deferred: batch.length - dispatched, more: taken[0]!.more, nextInMs: null };
}
