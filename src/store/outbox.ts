/**
 * The relay's side of the outbox: take available rows with SKIP LOCKED (so many relays share
 * the work), hand them to a publisher, then delete what was dispatched and defer what was not,
 * by row id, in the same short transaction.
 */
import { sql } from "drizzle-orm";
import type { PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { jsonParam, rows } from "./db.js";

/** An outbox row on its way to becoming a token. */
export interface OutboxRow {
  id: number;
  kind: string;
  identity: string;
  tries: number;
}

/** What the publisher made of one row: dispatched, refused because a token is pending, or failed. */
export type DispatchResult = "ok" | "busy" | "error";

/** Longest wait between retries of a row whose token stays pending, in ms. */
export const MAX_DEFER_MS = 1_000;

/**
 * Takes up to `limit` available rows, calls `publish` with them (inside the transaction, which
 * holds their row locks), deletes the dispatched ones and defers the others with a capped
 * exponential delay (20 ms, 40 ms, … 1 s). Returns how many rows were taken.
 */
export async function relayOutbox(
  db: PostgresJsDatabase,
  namespace: string,
  limit: number,
  publish: (batch: OutboxRow[]) => Promise<DispatchResult[]>,
): Promise<{ taken: number; dispatched: number; deferred: number }> {
  return db.transaction(async (tx) => {
    const batch = (
      await rows<{ id: string; kind: string; identity: string; tries: number }>(
        tx,
        sql`select id::text, kind, identity, tries from dmm.dmm_outbox
            where namespace = ${namespace} and available_at <= now()
            order by available_at, id limit ${limit}::int
            for update skip locked`,
      )
    ).map((r) => ({ id: Number(r.id), kind: r.kind, identity: r.identity, tries: r.tries }));
    if (batch.length === 0) return { taken: 0, dispatched: 0, deferred: 0 };
    const results = await publish(batch);
    const done: number[] = [];
    const later: { id: number; ms: number }[] = [];
    batch.forEach((row, i) => {
      if (results[i] === "ok") done.push(row.id);
      else later.push({ id: row.id, ms: Math.min(MAX_DEFER_MS, 20 * 2 ** Math.min(row.tries, 10)) });
    });
    if (done.length > 0) {
      await rows(tx, sql`delete from dmm.dmm_outbox where id in (select jsonb_array_elements_text(${jsonParam(done)})::bigint)`);
    }
    if (later.length > 0) {
      await rows(
        tx,
        sql`update dmm.dmm_outbox o set available_at = now() + x.ms * interval '1 millisecond', tries = o.tries + 1
            from jsonb_to_recordset(${jsonParam(later)}) as x(id bigint, ms float8) where o.id = x.id`,
      );
    }
    return { taken: batch.length, dispatched: done.length, deferred: later.length };
  });
}

/** The earliest time an outbox row of the namespace becomes available, in ms from now; null if none. */
export async function nextRelayInMs(db: PostgresJsDatabase, namespace: string): Promise<number | null> {
  const r = await rows<{ ms: number | null }>(
    db,
    sql`select greatest(0, extract(epoch from (min(available_at) - now())) * 1000)::float8 as ms
        from dmm.dmm_outbox where namespace = ${namespace}`,
  );
  return r[0]?.ms ?? null;
}
