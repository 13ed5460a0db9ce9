/**
 * Finish: the fenced end of a run, many runs per statement. Only a run that still holds its
 * lease (owner, epoch, unexpired) can save its cache, record its failure or commit its
 * `ctx.notify`s.
 */
import { sql } from "drizzle-orm";
import { jsonParam, rows, type Executor } from "./db.js";
import { notifyMatters, touchMatters, type NotifyItem, type TouchItem } from "./notify.js";

/** How a run ended, as the store records it. */
/** `release` gives the matter back untouched (shutdown aborted the run): no attempt is counted. */
export type FinishOutcome = "ok" | "fail" | "park" | "release";

/** One run's finish. */
export interface FinishItem {
  /** The worker id the lease was stamped with. */
  owner: string;
  kind: string;
  identity: string;
  epoch: number;
  /** The generation the run started from. */
  generation: number;
  outcome: FinishOutcome;
  /** The cache the run read at claim (merge base). */
  base: Record<string, unknown>;
  /** JSON text of the cache after a successful run (ignored otherwise). */
  cache: string | null;
  /** Error text for `fail` and `park`. */
  error: string | null;
  /** Next scheduled run in ms from now (retry, requeue or resync), or null. */
  dueInMs: number | null;
  dueReason: "retry" | "requeue" | "resync" | null;
  /** ctx.notify/ctx.touch of a successful run, committed with it. */
  notifies?: NotifyItem[];
  touches?: TouchItem[];
}

/** What the store says about one finished run. */
export interface FinishResult {
  /** False when the lease was lost: nothing of this run was written. */
  saved: boolean;
  /** True when a notify arrived during the run; the finish put the matter back on the outbox. */
  dirty: boolean;
}

/**
 * Finishes runs in one statement (one transaction when some successful runs carry
 * `ctx.notify`s). A matter whose generation moved during its run goes back on the outbox in
 * the same statement, so exactly one more run follows however many notifies arrived.
 */
export async function finishRuns(
  exec: Executor & { transaction?: <T>(fn: (tx: Executor) => Promise<T>) => Promise<T> },
  namespace: string,
  items: FinishItem[],
): Promise<FinishResult[]> {
  if (items.length === 0) return [];
  const hasChildren = items.some((i) => i.outcome === "ok" && ((i.notifies?.length ?? 0) > 0 || (i.touches?.length ?? 0) > 0));
  const kinds = new Set(items.map((i) => i.kind));
  if (kinds.size === 1 && (!hasChildren || !exec.transaction)) return finishStatement(exec, namespace, items);
  const all = async (ex: Executor): Promise<FinishResult[]> => {
    const results: FinishResult[] = new Array(items.length);
    for (const kind of [...kinds].sort()) {
      const idx = items.flatMap((item, i) => (item.kind === kind ? [i] : []));
      const part = await finishStatement(ex, namespace, idx.map((i) => items[i]!));
      idx.forEach((i, j) => (results[i] = part[j]!));
    }
    return results;
  };
  if (!hasChildren || !exec.transaction) return all(exec);
  return exec.transaction(async (tx) => {
    const results = await all(tx);
    const notifies: NotifyItem[] = [];
    const touches: TouchItem[] = [];
    items.forEach((item, i) => {
      if (!results[i]!.saved || item.outcome !== "ok") return;
      notifies.push(...(item.notifies ?? []));
      touches.push(...(item.touches ?? []));
    });
    await notifyMatters(tx, namespace, notifies);
    await touchMatters(tx, namespace, touches);
    return results;
  });
}

/** Finishes runs of one kind in one statement. */
async function finishStatement(exec: Executor, namespace: string, items: FinishItem[]): Promise<FinishResult[]> {
  const kind = items[0]!.kind;
  const list = items.map((i, ord) => ({
    ord,
    owner: i.owner,
    identity: i.identity,
    epoch: i.epoch,
    gen: i.generation,
    outcome: i.outcome,
    base: i.base,
    cache: i.cache === null ? null : (JSON.parse(i.cache) as unknown),
    error: i.error,
    due_ms: i.dueInMs,
    due_reason: i.dueReason,
  }));
  const done = await rows<{ ord: number; dirty: boolean }>(
    exec,
    sql`with x as (
          select * from jsonb_to_recordset(${jsonParam(list)}) as x(
            ord int, owner text, identity text, epoch bigint, gen bigint, outcome text,
            base jsonb, cache jsonb, error text, due_ms float8, due_reason text)
        ), locked as (
          -- Lock in key order (see the lock order note in notify.ts), one key lookup each.
          select m.identity from (select identity from x order by identity) x
          cross join lateral (
            select m.identity from dmm.dmm_matter m
            where m.namespace = ${namespace} and m.kind = ${kind} and m.identity = x.identity
            limit 1 for update
          ) m
        ), done as (
          update dmm.dmm_matter m set
            cache = case when x.outcome <> 'ok' then m.cache
                         when m.cache = x.base then x.cache
                         else dmm.merge_cache(x.base, x.cache, m.cache) end,
            observed_generation = case when x.outcome in ('ok', 'park') then x.gen else m.observed_generation end,
            attempts = case x.outcome when 'ok' then 0 when 'release' then m.attempts else m.attempts + 1 end,
            last_error = case x.outcome when 'ok' then null when 'release' then m.last_error else x.error end,
            parked = case x.outcome when 'release' then m.parked else (x.outcome = 'park' and m.generation = x.gen) end,
            due_at = case when x.outcome = 'release' then m.due_at
                          when x.due_ms is null or (x.outcome <> 'fail' and m.generation > x.gen) then null
                          else now() + x.due_ms * interval '1 millisecond' end,
            due_reason = case when x.outcome = 'release' then m.due_reason
                              when x.outcome <> 'fail' and m.generation > x.gen then null else x.due_reason end,
            lease_owner = null, lease_until = null, updated_at = now()
          from x
          where m.namespace = ${namespace} and m.kind = ${kind}
            and m.identity = any(array(select identity from locked)) and m.identity = x.identity
            and m.lease_owner = x.owner and m.lease_epoch = x.epoch and m.lease_until > now()
          returning x.ord, x.identity,
            (x.outcome = 'release' or (m.generation > x.gen and (x.outcome <> 'fail' or x.due_ms is null))) as dirty
        ), requeue as (
          insert into dmm.dmm_outbox (namespace, kind, identity)
          select ${namespace}::text, ${kind}::text, d.identity from done d where d.dirty order by d.identity
          on conflict (namespace, kind, identity) do update set bumps = dmm.dmm_outbox.bumps + 1
          returning kind
        ), wake as (
          select pg_notify('dmm_outbox', ${namespace} || ':' || kind) from (select distinct kind from requeue) k
        )
        select d.ord, d.dirty, (select count(*) from wake) as woke from done d`,
  );
  const results: FinishResult[] = items.map(() => ({ saved: false, dirty: false }));
  for (const row of done) results[row.ord] = { saved: true, dirty: row.dirty };
  return results;
}
