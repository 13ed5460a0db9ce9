/**
 * Notify and touch: upsert matters and bump their generation, in the caller's transaction when
 * one is given, and enqueue them on the outbox in that same transaction (new matters by the
 * insert trigger, bumped ones by `dmm.notify_matters` itself; other writers of a generation by
 * the update trigger).
 */
import { sql } from "drizzle-orm";
import { jsonParam, pgArray, rows, type Executor } from "./db.js";

/** One notify: a matter's identity and the JSON text of its new cache. */
export interface NotifyItem {
  kind: string;
  identity: string;
  /** JSON text of the cache, already validated by `encodeCache`. */
  cache: string;
}

/** One touch: a matter to run again with its cache kept. */
export interface TouchItem {
  kind: string;
  identity: string;
}

/*
 * Lock order. Every statement that locks several rows locks matter rows before outbox rows,
 * each in (kind, identity) order, so dmm's statements never deadlock one another however
 * batches overlap. That order is bytewise (`COLLATE "C"`, the key columns' own collation):
 * keys that come in as parameters carry the database's default collation and are sorted
 * `collate "C"` explicitly. Claims and the sweep use SKIP LOCKED and never wait at all.
 */

/**
 * Replaces the caches of `items` and bumps their generations (creating missing matters). A
 * notify clears a parked state and any pending backoff: fresh news runs at once.
 * Later duplicates of one identity in `items` win.
 */
export async function notifyMatters(exec: Executor, namespace: string, items: NotifyItem[]): Promise<void> {
  if (items.length === 0) return;
  await upsertMatters(exec, namespace, dedupe(items), false);
}

/** Bumps the generations of `items`, keeping their caches; a missing matter starts with `{}`. */
export async function touchMatters(exec: Executor, namespace: string, items: TouchItem[]): Promise<void> {
  if (items.length === 0) return;
  await upsertMatters(exec, namespace, dedupe(items), true);
}

/**
 * One call of `dmm.notify_matters` (migration 0023): the upsert, then the outbox rows of the
 * matters it bumped in one statement (new matters get theirs from the insert trigger). Kinds,
 * identities and caches go as text arrays; each cache, JSON text from encodeCache already, is
 * parsed once, into the column's jsonb. `touch` keeps existing caches.
 */
async function upsertMatters(exec: Executor, namespace: string, items: (NotifyItem | TouchItem)[], touch: boolean): Promise<void> {
  await rows(
    exec,
    sql`select dmm.notify_matters(${namespace}::text, ${pgArray(items.map((i) => i.kind))}::text[],
          ${pgArray(items.map((i) => i.identity))}::text[],
          ${pgArray(items.map((i) => ("cache" in i ? i.cache : undefined)))}::text[], ${touch}::boolean)`,
  );
}

/**
 * Puts matters back on the outbox without bumping their generation: how the scheduler turns a
 * due retry, requeue or resync into work. A no-op for matters already on the outbox.
 */
export async function enqueueMatters(exec: Executor, namespace: string, items: TouchItem[]): Promise<void> {
  if (items.length === 0) return;
  await rows(
    exec,
    sql`with keys as (
          select x.kind, x.identity from jsonb_to_recordset(${jsonParam(dedupe(items))}) as x(kind text, identity text)
        ), locked as (
          select m.row, k.kind, k.identity from (select * from keys order by kind collate "C", identity collate "C") k
          cross join lateral (
            select m.ctid as row from dmm.dmm_matter m
            where m.namespace = ${namespace} and m.kind = k.kind and m.identity = k.identity
            limit 1 for update
          ) m
        ), stamp as (
          update dmm.dmm_matter m set dispatched_at = now() from locked k where m.namespace = ${namespace} and m.kind = k.kind and m.identity = k.identity
        ), ins as (
          insert into dmm.dmm_outbox (namespace, kind, identity)
          select ${namespace}::text, k.kind, k.identity from locked k order by k.kind collate "C", k.identity collate "C"
          on conflict (namespace, kind, identity) do update set bumps = dmm.dmm_outbox.bumps + 1,
            available_at = least(dmm.dmm_outbox.available_at, now()), relay_until = null
          returning kind
        )
        select pg_notify('dmm_outbox', ${namespace} || ':' || kind) from (select distinct kind from ins) d`,
  );
}

function dedupe<T extends { kind: string; identity: string }>(items: T[]): T[] {
  if (items.length === 1) return items;
  const byKey = new Map<string, T>();
  for (const item of items) byKey.set(`${item.kind}\u0000${item.identity}`, item);
  return [...byKey.values()];
}
