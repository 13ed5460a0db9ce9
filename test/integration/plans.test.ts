/**
 * dmm's hot functions keep one generic plan per connection for the connection's life
 * (`plan_cache_mode = force_generic_plan`), planned at their first call, often on an outbox
 * without statistics. Whatever the table looked like then, a take must stay an
 * ordered scan of the take index that stops after the rows it takes: never a scan of the
 * kind's whole outbox through the primary key and a sort (which made every take cost in
 * proportion to the backlog, migration 0012), and never a plan priced so high that Postgres
 * JIT-compiles it on every call.
 */
import { describe, expect, it } from "vitest";
import postgres from "postgres";
import { drizzle } from "drizzle-orm/postgres-js";
import { claimKeys, finishRuns, listMatters, notifyMatters, relayOutbox, takeAndClaim } from "../../src/store/index.js";
import { TEMPLATE_DB } from "../harness/env.js";
import { indexReads } from "../harness/index-reads.js";
import { withScratchDatabase } from "../harness/scratch-db.js";
import { useTestEnvironment } from "../harness/setup.js";

useTestEnvironment();

const BACKLOG = 50_000;

/**
 * A database of its own, cloned from the migrated template: its outbox starts empty. Notices
 * (auto_explain's plans) go to `notices` when given.
 */
function withFreshDatabase(fn: (sql: postgres.Sql) => Promise<void>, notices?: string[]): Promise<void> {
  return withScratchDatabase("plan", `template "${TEMPLATE_DB}"`, async (url) => {
    const sql = postgres(url, { max: 1, onnotice: (n) => notices?.push(String(n.message)) });
    try {
      await fn(sql);
    } finally {
      await sql.end();
    }
  });
}


async function fillOutbox(sql: postgres.Sql, ns: string): Promise<void> {
  const db = drizzle(sql);
  for (let i = 0; i < BACKLOG; i += 500) {
    await notifyMatters(db, ns, Array.from({ length: 500 }, (_, j) => ({ kind: "k", identity: `i${i + j}`, cache: "{}" })));
  }
  // As the benchmark's scale scenario and any autovacuum leave it: the matters have statistics.
  await sql`analyze dmm.dmm_matter`;
}

describe("a take first planned on a large outbox without statistics", () => {
  it("takes from a backlog of 50,000 through the take index, reading about the rows it takes (Postgres-only dispatch)", async () => {
    await withFreshDatabase(async (sql) => {
      const db = drizzle(sql);
      const ns = "plans";
      await fillOutbox(sql, ns);
      const before = await indexReads(sql);
      const { taken, claimed } = await takeAndClaim(db, ns, "owner-1", 30_000, "k", 256);
      const after = await indexReads(sql);
      expect(taken).toBe(256);
      expect(claimed).toHaveLength(256);
      expect(after.dmm_outbox_pkey! - before.dmm_outbox_pkey!, "outbox primary-key entries read").toBe(0);
      expect(after.dmm_outbox_take_idx! - before.dmm_outbox_take_idx!, "take index entries read").toBeLessThan(600);
      // One key look-up per taken row; the stamp goes by ctid (migration 0021), never through the key.
      expect(after.dmm_matter_pkey! - before.dmm_matter_pkey!, "matter primary-key entries read").toBeLessThanOrEqual(256);
    });
  });

  it("relays from a backlog of 50,000 through the take index, reading about the rows it takes (NATS dispatch)", async () => {
    await withFreshDatabase(async (sql) => {
      const db = drizzle(sql);
      const ns = "plans";
      // The publisher is the relay's injected I/O: JetStream accepting every token.
      const accept = async (batch: unknown[]) => batch.map(() => "ok" as const);
      await fillOutbox(sql, ns);
      const before = await indexReads(sql);
      const r = await relayOutbox(db, ns, 500, accept);
      const after = await indexReads(sql);
      expect(r.taken).toBe(500);
      expect(r.dispatched).toBe(500);
      expect(after.dmm_outbox_pkey! - before.dmm_outbox_pkey!, "outbox primary-key entries read").toBe(0);
      expect(after.dmm_outbox_take_idx! - before.dmm_outbox_take_idx!, "take index entries read").toBeLessThan(1_100);
    });
  });
});

describe("a notify first planned on an outbox that statistics call empty", () => {
  it("reads at most one outbox key entry per new matter, however large the outbox has grown", async () => {
    await withFreshDatabase(async (sql) => {
      const db = drizzle(sql);
      const ns = "plans";
      // What VACUUM ANALYZE (or an autovacuum run) leaves while the outbox is empty.
      await sql`vacuum analyze dmm.dmm_outbox`;
      await notifyMatters(db, ns, [{ kind: "k", identity: "first", cache: "{}" }]);
      for (let i = 0; i < 10_000; i += 500) {
        await notifyMatters(db, ns, Array.from({ length: 500 }, (_, j) => ({ kind: "k", identity: `i${i + j}`, cache: "{}" })));
      }
      const before = await indexReads(sql);
      await notifyMatters(db, ns, Array.from({ length: 500 }, (_, j) => ({ kind: "k", identity: `n${j}`, cache: "{}" })));
      const after = await indexReads(sql);
      expect(after.dmm_outbox_pkey! - before.dmm_outbox_pkey!, "outbox primary-key entries read by 500 new matters").toBeLessThanOrEqual(500);
    });
  });
});

describe("a finish planned with statistics on the matters", () => {
  // The second case is a session (or role) that turned the planner's bitmap scans and nested
  // loops off: the function's own settings must win, or the cached plan compares every run
  // with every matter of the kind.
  // Both statements of the finish (0026): the one for a batch of successful runs without
  // details, and the general one, which a single failed run among them takes.
  it.each([
    ["default planner settings, every run ok", [], false],
    ["bitmap scans and nested loops turned off in the session, every run ok", ["enable_bitmapscan", "enable_nestloop"], false],
    ["default planner settings, one run failed", [], true],
    ["bitmap scans and nested loops turned off in the session, one run failed", ["enable_bitmapscan", "enable_nestloop"], true],
  ] as const)("matches each run of a batch of 1,000 with its own matter, not with every matter of the batch (%s)", async (_, off, oneFailed) => {
    const notices: string[] = [];
    await withFreshDatabase(async (sql) => {
      const db = drizzle(sql);
      const ns = "plans";
      const ids = Array.from({ length: 1_000 }, (_, i) => `f${i}`);
      await notifyMatters(db, ns, ids.map((identity) => ({ kind: "k", identity, cache: "{}" })));
      await sql`analyze dmm.dmm_matter`;
      const claims = await claimKeys(db, ns, "owner-1", 30_000, "k", ids);
      for (const setting of off) await sql`select set_config(${setting}, 'off', false)`;
      // The plan of every statement the finish runs, with its row counts, as notices.
      await sql`load 'auto_explain'`;
      await sql`select set_config('auto_explain.log_min_duration', '0', false), set_config('auto_explain.log_analyze', 'on', false),
                       set_config('auto_explain.log_nested_statements', 'on', false), set_config('auto_explain.log_level', 'notice', false)`;
      const results = await finishRuns(db, ns, claims.map((c, i) => {
        const m = (c as { matter: { identity: string; epoch: number; generation: number } }).matter;
        const failed = oneFailed && i === 0;
        return { owner: "owner-1", kind: "k", identity: m.identity, epoch: m.epoch, generation: m.generation,
                 outcome: failed ? ("fail" as const) : ("ok" as const), base: {}, cache: null,
                 error: failed ? "boom" : null, dueInMs: failed ? 1_000 : null, dueReason: failed ? ("retry" as const) : null };
      }));
      expect(results.every((r) => r.saved)).toBe(true);
      expect(notices.some((n) => n.includes("CASE WHEN x.outcome")), "the general statement ran").toBe(oneFailed);
      const update = notices.find((n) => n.includes("UPDATE \"dmm\".\"dmm_matter\" m SET") && n.includes("observed_generation"));
      expect(update, "the finish's UPDATE was explained").toBeDefined();
      const removed = [...update!.matchAll(/Rows Removed by (?:Join )?Filter: (\d+)/g)].map((m) => Number(m[1]));
      expect(Math.max(0, ...removed), "runs compared with a matter not their own").toBeLessThan(1_000);
    }, notices);
  });
});

describe("listing matters under the identity-first key (migration 0025)", () => {
  it("lists one kind's first matters in byte order, skipping the other kinds whose identities sort between them", async () => {
    await withFreshDatabase(async (sql) => {
      const db = drizzle(sql);
      const ns = "listing";
      // Three kinds share identities, so that in the key's order (identity first) every kind's
      // entries sit between another kind's; a fourth namespace's matters as well.
      const ids = Array.from({ length: 300 }, (_, i) => `id-${String(i).padStart(3, "0")}`);
      for (const kind of ["b", "a", "c"]) await notifyMatters(db, ns, ids.map((identity) => ({ kind, identity, cache: "{}" })));
      await notifyMatters(db, "other", ids.map((identity) => ({ kind: "a", identity, cache: "{}" })));
      await sql`analyze dmm.dmm_matter`;

      const page = await listMatters(db, ns, { kind: "b", limit: 50 });
      expect(page.map((m) => `${m.kind}/${m.identity}`)).toEqual(ids.slice(0, 50).map((id) => `b/${id}`));
      const all = await listMatters(db, ns, { limit: 450 });
      expect(all.map((m) => `${m.kind}/${m.identity}`)).toEqual([
        ...ids.map((id) => `a/${id}`),
        ...ids.slice(0, 150).map((id) => `b/${id}`),
      ]);
    });
  });
});

describe("dmm's functions", () => {
  it("turn JIT off wherever they pin the planner, so that a priced-out plan is not compiled on every call", async () => {
    await withFreshDatabase(async (sql) => {
      const fns = await sql<{ name: string; config: string[] | null }[]>`
        select p.proname as name, p.proconfig as config from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'dmm' order by 1`;
      const pinned = fns.filter((f) => (f.config ?? []).some((c) => c.startsWith("enable_")));
      expect(pinned.map((f) => f.name)).toContain("take_and_claim");
      for (const f of pinned) expect(f.config, f.name).toContain("jit=off");
    });
  });
});
