/**
 * Finish: the fenced end of a run, many runs per statement. Only a run that still holds its
 * lease (owner, epoch, unexpired) can save its cache, record its failure or commit its
 * `ctx.notify`s.
 */
import { sql } from "drizzle-orm";
import { pgArray, rows, type Executor } from "./db.js";
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
  /** JSON text of the cache after a successful run; null when the run left it as it was (and otherwise). */
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

/** Runs `fn` in one transaction; what {@link finishRuns} commits together. */
export type TransactionRunner = <T>(fn: (tx: Executor) => Promise<T>) => Promise<T>;

/**
 * Finishes runs in one statement (one transaction when some successful runs carry
 * `ctx.notify`s). A matter whose generation moved during its run goes back on the outbox in
 * the same statement, so exactly one more run follows however many notifies arrived.
 *
 * `exec` should be the Drizzle database itself (not a wrapper around its `execute`), so that
 * the statement goes out prepared (see `rows`); `transaction` defaults to `exec.transaction`.
 */
export async function finishRuns(
  exec: Executor & { transaction?: TransactionRunner },
  namespace: string,
  items: FinishItem[],
  transaction: TransactionRunner | undefined = exec.transaction?.bind(exec),
): Promise<FinishResult[]> {
  if (items.length === 0) return [];
  const hasChildren = items.some((i) => i.outcome === "ok" && ((i.notifies?.length ?? 0) > 0 || (i.touches?.length ?? 0) > 0));
  const kinds = new Set(items.map((i) => i.kind));
  if (kinds.size === 1 && (!hasChildren || !transaction)) return finishStatement(exec, namespace, items);
  const all = async (ex: Executor): Promise<FinishResult[]> => {
    const results: FinishResult[] = new Array(items.length);
    for (const kind of [...kinds].sort()) {
      const idx = items.flatMap((item, i) => (item.kind === kind ? [i] : []));
      const part = await finishStatement(ex, namespace, idx.map((i) => items[i]!));
      idx.forEach((i, j) => (results[i] = part[j]!));
    }
    return results;
  };
  if (!hasChildren || !transaction) return all(exec);
  return transaction(async (tx) => {
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
  // The common fields go as arrays (migration 0016); the rest (a cache to save, an error, a due
  // time) as JSON details aligned with them, one object per run ({} for a run with nothing more
  // to say), or [] when no run has any (migration 0024). The JSON is put together by hand so
  // that each cache, already JSON text from encodeCache, is spliced in as it is. A run that left
  // its cache as it found it sends neither cache nor base (the row keeps its cache).
  let anyDetails = false;
  const details = items.map((i) => {
    if (i.cache === null && i.error === null && i.dueInMs === null && i.dueReason === null) return "{}";
    anyDetails = true;
    const head = JSON.stringify({ error: i.error, due_ms: i.dueInMs, due_reason: i.dueReason });
    return i.cache === null ? head : `${head.slice(0, -1)},"cache":${i.cache},"base":${JSON.stringify(i.base)}}`;
  });
  const done = await rows<{ ord: number; dirty: boolean }>(
    exec,
    sql`select f.ord, f.dirty from dmm.finish_runs(${namespace}, ${kind},
          ${pgArray(items.map((i) => i.owner))}::text[], ${pgArray(items.map((i) => i.identity))}::text[],
          ${pgArray(items.map((i) => i.epoch))}::bigint[], ${pgArray(items.map((i) => i.generation))}::bigint[],
          ${pgArray(items.map((i) => i.outcome))}::text[], ${anyDetails ? `[${details.join(",")}]` : "[]"}::jsonb) f`,
  );
  const results: FinishResult[] = items.map(() => ({ saved: false, dirty: false }));
  for (const row of done) results[row.ord] = { saved: true, dirty: row.dirty };
  return results;
}
