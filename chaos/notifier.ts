/**
 * The chaos run's app side: a steady stream of notifies, each batch in the app's own Drizzle
 * transaction (`bucket.notify(batch, { tx })`) together with its row in `chaos.notify_log`.
 *
 * The notifier keeps its own record of every notify: `committed` once the commit returned,
 * `unknown` when the transaction failed or timed out (the commit may or may not have happened;
 * `chaos.notify_log`, written in the same transaction, tells afterwards which it was).
 * Values grow per identity and are never reused, so a value names exactly one notify.
 */
import postgres from "postgres";
import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { sql } from "drizzle-orm";
import { open, type Bucket } from "dmm";
import { KIND, TallyNote } from "./model.js";
import type { Random } from "./lib/index.js";

/** One notify as the notifier saw it end. */
export interface NotifyRecord {
  namespace: string;
  identity: string;
  value: number;
  /** The generation read back inside the transaction (committed notifies only). */
  generation: number | null;
  outcome: "committed" | "unknown";
  /** Wall time when the commit returned or failed. */
  at: number;
}

/** Options of {@link Notifier}. */
export interface NotifierOptions {
  /** Postgres URL (the notifier talks to the server directly, not through a worker's proxy). */
  url: string;
  namespaces: string[];
  identities: number;
  /** Pause between two batches of one namespace, ms. */
  intervalMs: number;
  /** Largest batch (identities per transaction); each batch has 1..batchMax. */
  batchMax: number;
  /** A transaction that has not returned after this long counts as unknown. */
  timeoutMs: number;
  random: Random;
}

/** The identity names of a run: `id-000` … */
export function identityName(i: number): string {
  return `id-${String(i).padStart(3, "0")}`;
}

/** The notify load; see the module comment. */
export class Notifier {
  readonly records: NotifyRecord[] = [];
  /** Committed notifies whose read-back inside their own transaction did not match (should never happen). */
  readonly anomalies: string[] = [];
  readonly #values = new Map<string, number>();
  readonly #client: postgres.Sql;
  readonly #db: PostgresJsDatabase;
  readonly #buckets = new Map<string, Bucket>();
  #loops: Promise<void>[] = [];
  #stop = false;
  /**
   * Notify transactions that have not settled yet. One that timed out (recorded `unknown`) is
   * still here while it waits, e.g. on a row lock held by a worker's transaction behind a
   * half-open link: it may still commit, so the run must not look at the outcome before it is
   * gone (see {@link Notifier.settle}).
   */
  readonly #inflight = new Set<Promise<unknown>>();

  private constructor(private readonly options: NotifierOptions) {
    this.#client = postgres(options.url, {
      max: 2 * options.namespaces.length,
      onnotice: () => {},
      connect_timeout: 5,
      // The driver's array-type fetch on a new connection rejects unhandled when the connection
      // is terminated meanwhile (porsager/postgres#1192), which would end the run's process.
      fetch_types: false,
      connection: { application_name: "chaos:notifier" },
    });
    this.#db = drizzle(this.#client);
  }

  /** Opens one (passive, never working) bucket per namespace. */
  static async open(options: NotifierOptions): Promise<Notifier> {
    const n = new Notifier(options);
    for (const ns of options.namespaces) {
      const bucket = await open(ns, { database: n.#client, logger: quietLogger });
      bucket.register(KIND, TallyNote);
      n.#buckets.set(ns, bucket);
    }
    return n;
  }

  /** Notifies every identity of every namespace once (value 0), retrying until it commits. */
  async seed(): Promise<void> {
    for (const ns of this.options.namespaces) {
      const all = Array.from({ length: this.options.identities }, (_, i) => identityName(i));
      for (let i = 0; i < all.length; i += 100) {
        const ids = all.slice(i, i + 100);
        for (let attempt = 1; ; attempt++) {
          if (await this.#notify(ns, ids)) break;
          if (attempt >= 5) throw new Error(`Could not seed ${ns}: five notify transactions in a row failed.`);
        }
      }
    }
  }

  /** Starts one notify loop per namespace. */
  start(): void {
    this.#stop = false;
    this.#loops = this.options.namespaces.map((ns) => this.#loop(ns));
  }

  /**
   * Stops the loops after their current batch; resolves when they have returned. Transactions
   * that timed out may still be running: see {@link Notifier.settle}.
   */
  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#loops);
  }

  /** Notify transactions still running (committed or rolled back only once they settle). */
  get inflight(): number {
    return this.#inflight.size;
  }

  /**
   * Waits until every notify transaction has settled (committed, failed or rolled back), up to
   * `timeoutMs`; returns how many are still running then. Only after this does
   * `chaos.notify_log` hold every notify that will ever commit.
   */
  async settle(timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.#inflight.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled([...this.#inflight]), new Promise((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
    return this.#inflight.size;
  }

  /** Notifies committed / with unknown outcome so far. */
  counts(): { committed: number; unknown: number } {
    let committed = 0;
    let unknown = 0;
    for (const r of this.records) if (r.outcome === "committed") committed++;
    else unknown++;
    return { committed, unknown };
  }

  /** Closes the buckets and the connection pool (bounded: a hung query must not hang the run). */
  async close(): Promise<void> {
    this.#stop = true;
    await Promise.race([Promise.allSettled(this.#loops), new Promise((r) => setTimeout(r, 5_000))]);
    for (const b of this.#buckets.values()) await b.close().catch(() => {});
    await this.#client.end({ timeout: 2 }).catch(() => {});
  }

  async #loop(ns: string): Promise<void> {
    const { random, identities, batchMax, intervalMs } = this.options;
    const all = Array.from({ length: identities }, (_, i) => identityName(i));
    while (!this.#stop) {
      await this.#notify(ns, random.sample(all, random.int(1, batchMax)));
      if (!this.#stop) await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** One batch in one transaction; returns true when the commit returned. */
  async #notify(ns: string, ids: string[]): Promise<boolean> {
    const bucket = this.#buckets.get(ns)!;
    const batch = ids.map((id) => {
      const key = `${ns}\u0000${id}`;
      const value = (this.#values.get(key) ?? -1) + 1;
      this.#values.set(key, value);
      return Object.assign(new TallyNote(), { id, value });
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      const transaction = this.#db.transaction(async (tx) => {
        await bucket.notify(batch, { tx });
        const rows = (await tx.execute(sql`
          insert into chaos.notify_log (namespace, identity, value, generation, at)
          select m.namespace, m.identity, (m.cache->>'value')::bigint, m.generation, clock_timestamp()
          from dmm.dmm_matter m
          where m.namespace = ${ns} and m.kind = ${KIND} and m.identity in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))
          returning identity, generation::text, value::text`)) as unknown as { identity: string; generation: string; value: string }[];
        return new Map(rows.map((r) => [r.identity, { generation: Number(r.generation), value: Number(r.value) }]));
      });
      this.#inflight.add(transaction);
      const forget = () => this.#inflight.delete(transaction);
      transaction.then(forget, forget);
      const generations = await Promise.race([
        transaction,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the notify transaction did not return within ${this.options.timeoutMs} ms`)), this.options.timeoutMs);
        }),
      ]);
      const at = Date.now();
      for (const n of batch) {
        const g = generations.get(n.id);
        if (!g || g.value !== n.value) this.anomalies.push(`${ns}/${n.id}: notified value ${n.value}, read back ${JSON.stringify(g ?? null)}`);
        this.records.push({ namespace: ns, identity: n.id, value: n.value, generation: g?.generation ?? null, outcome: "committed", at });
      }
      return true;
    } catch {
      const at = Date.now();
      for (const n of batch) this.records.push({ namespace: ns, identity: n.id, value: n.value, generation: null, outcome: "unknown", at });
      return false;
    } finally {
      clearTimeout(timer);
    }
  }
}

const quietLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return quietLogger;
  },
};
