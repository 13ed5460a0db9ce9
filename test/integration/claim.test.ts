/**
 * Claims at the store level: one lease per identity, however a batch names it.
 */
import { describe, expect, it } from "vitest";
import { drizzle } from "drizzle-orm/postgres-js";
import { claimKeys, finishRuns, notifyMatters, pgArray, takeAndClaim, type FinishItem } from "../../src/store/index.js";
import { indexReads } from "../harness/index-reads.js";
import { deferred, waitFor } from "../harness/wait.js";
import { useTestEnvironment } from "../harness/setup.js";

const env = useTestEnvironment();

describe("claimKeys", () => {
  it("claims an identity named twice in one batch once, and reports the repeat as idle", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "a", cache: "{}" }, { kind: "k", identity: "b", cache: "{}" }]);
    const statuses = await claimKeys(db, ns, "owner-1", 30_000, "k", ["a", "b", "a"]);
    expect(statuses.map((s) => s.status)).toEqual(["claimed", "claimed", "idle"]);
    const [row] = await sql`select lease_epoch::int as epoch from dmm.dmm_matter where namespace = ${ns} and identity = 'a'`;
    expect(row!.epoch).toBe(1);
    await sql.close();
  });

  it("gives one lease even when the SQL function itself is asked for a key twice (the caller deduplicates first)", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "a", cache: "{}" }]);
    const rows = await sql`select c.ord, c.status, c.epoch::int as epoch from dmm.claim_keys(${ns}, 'k', 'owner-1', 30000, ${pgArray(["a", "a"])}::text[]) c`;
    expect(rows.map((r) => [r.ord, r.status, r.epoch])).toEqual([[0, "claimed", 1], [1, "idle", null]]);
    await sql.close();
  });
});

describe("claimKeys for a batch token's identities", () => {
  it("claims where the outbox holds the token's own row (settled, deferred or not) or none, and leaves the matter to a newer row or a bumped one", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    const keys = ["own", "other", "bumped", "gone", "single", "deferred"];
    await notifyMatters(db, ns, keys.map((identity) => ({ kind: "k", identity, cache: "{}" })));
    // The rows a relay's take would have named.
    const outbox = new Map(
      (await sql<{ identity: string; id: string; bumps: number }[]>`select identity, id::text, bumps from dmm.dmm_outbox where namespace = ${ns}`).map((r) => [
        r.identity,
        { row: Number(r.id), bumps: r.bumps },
      ]),
    );
    await notifyMatters(db, ns, [{ kind: "k", identity: "bumped", cache: "{}" }]);
    await sql`delete from dmm.dmm_outbox where namespace = ${ns} and identity = 'gone'`;
    // A relay's settle deferred this row after a failed publish: a new row version, same row.
    await sql`update dmm.dmm_outbox set tries = tries + 1, available_at = now() + interval '20 milliseconds' where namespace = ${ns} and identity = 'deferred'`;
    const origins = [
      outbox.get("own")!,
      { ...outbox.get("other")!, row: outbox.get("other")!.row + 1000 },
      outbox.get("bumped")!,
      outbox.get("gone")!,
      null,
      outbox.get("deferred")!,
    ];
    const statuses = await claimKeys(db, ns, "owner-1", 30_000, "k", keys, origins);
    expect(statuses.map((s) => s.status)).toEqual(["claimed", "idle", "idle", "claimed", "claimed", "claimed"]);
    const leased = await sql`select identity from dmm.dmm_matter where namespace = ${ns} and lease_owner is not null order by identity`;
    expect(leased.map((r) => r.identity)).toEqual(["deferred", "gone", "own", "single"]);
    await sql.close();
  });
});

describe("claimKeys for an identity whose outbox row is waiting", () => {
  it("leaves a matter in a coalescing pause to its row, single token or batch, and claims one whose row waits out a refused publish", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, ["paused", "retrying", "due"].map((identity) => ({ kind: "k", identity, cache: "{}" })));
    // A finish's coalescing pause (tries 0), a refused publish's retry (tries 2), a row due now.
    await sql`update dmm.dmm_outbox set available_at = now() + interval '1 hour'
              where namespace = ${ns} and identity = 'paused'`;
    await sql`update dmm.dmm_outbox set available_at = now() + interval '1 hour', tries = 2
              where namespace = ${ns} and identity = 'retrying'`;
    const single = await claimKeys(db, ns, "owner-1", 30_000, "k", ["paused", "retrying", "due"]);
    expect(single.map((s) => s.status)).toEqual(["idle", "claimed", "claimed"]);
    await sql`update dmm.dmm_matter set lease_owner = null, lease_until = null where namespace = ${ns}`;
    const rows = await sql<{ identity: string; id: string; bumps: number }[]>`
      select identity, id::text, bumps from dmm.dmm_outbox where namespace = ${ns} and identity = 'paused'`;
    const batch = await claimKeys(db, ns, "owner-1", 30_000, "k", ["paused"], [{ row: Number(rows[0]!.id), bumps: rows[0]!.bumps }]);
    expect(batch.map((s) => s.status), "a batch token naming the paused row itself").toEqual(["idle"]);
    await sql.close();
  });

  it("is paused by a finish that saw notifies, whatever retries the row had earned while the run's token was pending", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "x", cache: "{}" }]);
    const [claim] = await claimKeys(db, ns, "owner-1", 30_000, "k", ["x"]);
    expect(claim!.status).toBe("claimed");
    const matter = (claim as { matter: { epoch: number; generation: number } }).matter;
    // Notified during the run, and its publish refused twice (the run's token was pending).
    await notifyMatters(db, ns, [{ kind: "k", identity: "x", cache: '{"v":2}' }]);
    await sql`update dmm.dmm_outbox set tries = 2 where namespace = ${ns}`;
    const [done] = await finishRuns(db, ns, [{
      owner: "owner-1", kind: "k", identity: "x", epoch: matter.epoch, generation: matter.generation, outcome: "ok",
      base: {}, cache: null, error: null, dueInMs: null, dueReason: null,
    }]);
    expect(done).toEqual({ saved: true, dirty: true });
    const [row] = await sql`select tries, available_at > now() as waiting from dmm.dmm_outbox where namespace = ${ns}`;
    expect(row).toEqual({ tries: 0, waiting: true });
    // The pause is 50 ms, which a busy machine can spend before the next statement: made long
    // enough here that the token below surely arrives within it (its length is not under test).
    await sql`update dmm.dmm_outbox set available_at = now() + interval '1 hour' where namespace = ${ns}`;
    const [late] = await claimKeys(db, ns, "owner-1", 30_000, "k", ["x"]);
    expect(late!.status, "a token that arrives in the pause").toBe("idle");
    await sql.close();
  });
});

describe("finishRuns", () => {
  it("records each run of a mixed batch by its own fields, and writes nothing for a run whose lease moved on", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    const ids = ["same", "saved", "failed", "parked", "requeued", "stale", "other-owner"];
    await notifyMatters(db, ns, ids.map((identity) => ({ kind: "k", identity, cache: '{"v":1}' })));
    const claimed = new Map<string, { epoch: number; generation: number; owner: string }>();
    for (const [owner, keys] of [["owner-1", ids.slice(0, 6)], ["owner-2", ids.slice(6)]] as const) {
      for (const s of await claimKeys(db, ns, owner, 30_000, "k", [...keys])) {
        expect(s.status).toBe("claimed");
        const m = (s as { matter: { identity: string; epoch: number; generation: number } }).matter;
        claimed.set(m.identity, { epoch: m.epoch, generation: m.generation, owner });
      }
    }
    const item = (identity: string, fields: Partial<FinishItem>): FinishItem => ({
      owner: claimed.get(identity)!.owner, kind: "k", identity, epoch: claimed.get(identity)!.epoch,
      generation: claimed.get(identity)!.generation, outcome: "ok" as const, base: { v: 1 }, cache: null,
      error: null, dueInMs: null, dueReason: null, ...fields,
    });
    const results = await finishRuns(db, ns, [
      item("same", {}),
      item("saved", { cache: '{"v":2}' }),
      item("failed", { outcome: "fail", error: "boom", dueInMs: 60_000, dueReason: "retry" }),
      item("parked", { outcome: "park", error: "bad input" }),
      item("requeued", { cache: '{"v":3}', dueInMs: 120_000, dueReason: "requeue" }),
      item("stale", { epoch: claimed.get("stale")!.epoch - 1, cache: '{"v":9}' }),
      item("other-owner", { cache: '{"v":4}' }),
    ]);
    expect(results.map((r) => r.saved)).toEqual([true, true, true, true, true, false, true]);
    const rows = await sql`
      select identity, cache, attempts, last_error, parked, due_reason,
             round(extract(epoch from due_at - now()))::int as due_s, lease_owner, observed_generation = generation as clean
      from dmm.dmm_matter where namespace = ${ns} order by identity`;
    const by = Object.fromEntries(rows.map((r) => [r.identity, r]));
    expect(by.same).toMatchObject({ cache: { v: 1 }, attempts: 0, last_error: null, due_reason: null, lease_owner: null, clean: true });
    expect(by.saved).toMatchObject({ cache: { v: 2 }, attempts: 0, lease_owner: null, clean: true });
    expect(by.failed).toMatchObject({ cache: { v: 1 }, attempts: 1, last_error: "boom", due_reason: "retry", lease_owner: null, clean: false });
    expect(by.failed!.due_s).toBeGreaterThanOrEqual(58);
    expect(by.parked).toMatchObject({ attempts: 1, last_error: "bad input", parked: true, lease_owner: null, clean: true });
    expect(by.requeued).toMatchObject({ cache: { v: 3 }, due_reason: "requeue", lease_owner: null, clean: true });
    expect(by.requeued!.due_s).toBeGreaterThanOrEqual(118);
    expect(by.stale).toMatchObject({ cache: { v: 1 }, lease_owner: "owner-1", clean: false });
    expect(by["other-owner"]).toMatchObject({ cache: { v: 4 }, lease_owner: null, clean: true });
    await sql.close();
  });
});

describe("finishRuns of a batch whose runs all succeeded without details (migration 0026)", () => {
  it("clears a failure's attempts, error and due time, re-enqueues a matter notified during its run, and writes nothing for a lost lease", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, ["a", "b", "c"].map((identity) => ({ kind: "k", identity, cache: '{"v":1}' })));
    const claim = async (ids: string[]) =>
      new Map((await claimKeys(db, ns, "owner-1", 30_000, "k", ids)).map((s, i) => {
        expect(s.status, ids[i]).toBe("claimed");
        return [ids[i]!, (s as { matter: { epoch: number; generation: number } }).matter] as const;
      }));
    const item = (identity: string, m: { epoch: number; generation: number }, fields: Partial<FinishItem> = {}): FinishItem => ({
      owner: "owner-1", kind: "k", identity, epoch: m.epoch, generation: m.generation, outcome: "ok", base: { v: 1 },
      cache: null, error: null, dueInMs: null, dueReason: null, ...fields,
    });
    // "a" fails first, with a retry due at once.
    const first = await claim(["a"]);
    await finishRuns(db, ns, [item("a", first.get("a")!, { outcome: "fail", error: "boom", dueInMs: 0, dueReason: "retry" })]);
    const [failed] = await sql`select attempts, last_error, due_reason from dmm.dmm_matter where namespace = ${ns} and identity = 'a'`;
    expect(failed).toMatchObject({ attempts: 1, last_error: "boom", due_reason: "retry" });

    const runs = await claim(["a", "b", "c"]);
    await notifyMatters(db, ns, [{ kind: "k", identity: "b", cache: '{"v":1}' }]);
    await sql`delete from dmm.dmm_outbox where namespace = ${ns}`;
    const results = await finishRuns(db, ns, [
      item("a", runs.get("a")!),
      item("b", runs.get("b")!),
      item("c", { ...runs.get("c")!, epoch: runs.get("c")!.epoch - 1 }),
    ]);
    expect(results).toEqual([{ saved: true, dirty: false }, { saved: true, dirty: true }, { saved: false, dirty: false }]);
    const rows = await sql`
      select identity, cache, attempts, last_error, parked, due_at, due_reason, lease_owner, lease_until,
             observed_generation::int as o, generation::int as g
      from dmm.dmm_matter where namespace = ${ns} order by identity`;
    const by = Object.fromEntries(rows.map((r) => [r.identity, r]));
    expect(by.a).toMatchObject({ cache: { v: 1 }, attempts: 0, last_error: null, parked: false, due_at: null, due_reason: null,
                                 lease_owner: null, lease_until: null, o: runs.get("a")!.generation, g: runs.get("a")!.generation });
    expect(by.b).toMatchObject({ lease_owner: null, o: runs.get("b")!.generation, g: runs.get("b")!.generation + 1 });
    expect(by.c).toMatchObject({ lease_owner: "owner-1", o: 0 });
    const pending = await sql`select identity from dmm.dmm_outbox where namespace = ${ns} order by identity`;
    expect(pending.map((r) => r.identity)).toEqual(["b"]);
    await sql.close();
  });
});

describe("finishRuns against notifies and older workers", () => {
  it("waits for a notify that holds the matter, then saves the run and puts the matter back on the outbox", async () => {
    const sql = env.sql();
    const other = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "a", cache: '{"v":1}' }]);
    const [claim] = await claimKeys(db, ns, "owner-1", 30_000, "k", ["a"]);
    const m = (claim as { matter: { epoch: number; generation: number } }).matter;
    await sql`delete from dmm.dmm_outbox where namespace = ${ns}`;
    // A notify commits while the finish waits for its row lock: the finish must see the new row
    // version by key, save the run and find the matter dirty.
    const holding = deferred();
    const locked = deferred();
    const notify = drizzle(other).transaction(async (tx) => {
      await notifyMatters(tx, ns, [{ kind: "k", identity: "a", cache: '{"v":5}' }]);
      locked.resolve();
      await holding.promise;
    });
    await locked.promise;
    const finishing = finishRuns(db, ns, [{
      owner: "owner-1", kind: "k", identity: "a", epoch: m.epoch, generation: m.generation, outcome: "ok",
      base: { v: 1 }, cache: '{"v":2,"w":1}', error: null, dueInMs: null, dueReason: null,
    }]);
    await waitFor("the finish to wait for the notify's row lock", async () => {
      const [w] = await sql`select count(*)::int as n from pg_stat_activity
                            where datname = current_database() and wait_event_type = 'Lock' and query like '%finish_runs%'`;
      return w!.n === 1;
    });
    holding.resolve();
    await notify;
    expect(await finishing).toEqual([{ saved: true, dirty: true }]);
    const [row] = await sql`select cache, generation::int as g, observed_generation::int as o, lease_owner from dmm.dmm_matter where namespace = ${ns}`;
    // The notify's field wins where both changed it; the run's own new field stays.
    expect(row).toMatchObject({ cache: { v: 5, w: 1 }, g: m.generation + 1, o: m.generation, lease_owner: null });
    const [pending] = await sql`select count(*)::int as n from dmm.dmm_outbox where namespace = ${ns} and identity = 'a'`;
    expect(pending!.n).toBe(1);
    await other.close();
    await sql.close();
  });

  it("reads the details of a worker before migration 0024 (only the runs that have any, each with its ord)", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    const ids = ["plain", "saved", "failed"];
    await notifyMatters(db, ns, ids.map((identity) => ({ kind: "k", identity, cache: '{"v":1}' })));
    const ms = (await claimKeys(db, ns, "owner-1", 30_000, "k", ids)).map((c) => (c as { matter: { epoch: number; generation: number } }).matter);
    const details = JSON.stringify([
      { ord: 1, error: null, due_ms: null, due_reason: null, cache: { v: 2 }, base: { v: 1 } },
      { ord: 2, error: "boom", due_ms: 60000, due_reason: "retry" },
    ]);
    const done = await sql`select f.ord, f.dirty from dmm.finish_runs(${ns}, 'k', ${pgArray(ids.map(() => "owner-1"))}::text[],
      ${pgArray(ids)}::text[], ${pgArray(ms.map((m) => m.epoch))}::bigint[], ${pgArray(ms.map((m) => m.generation))}::bigint[],
      ${pgArray(["ok", "ok", "fail"])}::text[], ${details}::text::jsonb) f order by f.ord`;
    expect(done.map((r) => [r.ord, r.dirty])).toEqual([[0, false], [1, false], [2, false]]);
    const rows = await sql`select identity, cache, attempts, last_error, due_reason, due_at is not null as due
                           from dmm.dmm_matter where namespace = ${ns} order by identity`;
    const by = Object.fromEntries(rows.map((r) => [r.identity, r]));
    expect(by.plain).toMatchObject({ cache: { v: 1 }, attempts: 0, last_error: null, due: false });
    expect(by.saved).toMatchObject({ cache: { v: 2 }, attempts: 0, last_error: null, due: false });
    expect(by.failed).toMatchObject({ cache: { v: 1 }, attempts: 1, last_error: "boom", due_reason: "retry", due: true });
    await sql.close();
  });
});

describe("pgArray", () => {
  it("spells arrays that Postgres reads back as they were, quotes, backslashes, braces and commas included", async () => {
    const sql = env.sql();
    const texts = ['a"b', "c\\d", "{e,f}", "g h", "", "NULL", "(0,1)"];
    const [row] = await sql`select ${pgArray(texts)}::text[] as t, array_to_string(${pgArray([1, undefined, 9007199254740991])}::bigint[], ',', 'null') as n,
                                   ${pgArray([true, false])}::boolean[] as b, ${pgArray(["(0,1)", "(12,3)"])}::tid[]::text[] as tid`;
    expect(row).toEqual({ t: texts, n: "1,null,9007199254740991", b: [true, false], tid: ["(0,1)", "(12,3)"] });
    await sql.close();
  });
});

describe("claimKeys' outbox look-up for a batch token's identities", () => {
  it("reads one primary-key entry per identity, however many outbox rows its kind has and with no statistics", async () => {
    const sql = env.sql({ max: 1 });
    const db = drizzle(sql);
    const ns = env.namespace();
    const keys = Array.from({ length: 3_000 }, (_, i) => `k${i}`);
    for (let i = 0; i < keys.length; i += 500) await notifyMatters(db, ns, keys.slice(i, i + 500).map((identity) => ({ kind: "k", identity, cache: "{}" })));
    const rowsOf = new Map(
      (await sql<{ identity: string; id: string }[]>`select identity, id::text from dmm.dmm_outbox where namespace = ${ns}`).map((r) => [r.identity, { row: Number(r.id), bumps: 0 }]),
    );
    const reads = () => indexReads(sql);
    const picked = keys.filter((_, i) => i % 30 === 0);
    const before = await reads();
    const statuses = await claimKeys(db, ns, "owner-1", 30_000, "k", picked, picked.map((k) => rowsOf.get(k)!));
    const after = await reads();
    expect(statuses.every((s) => s.status === "claimed")).toBe(true);
    expect(after.dmm_outbox_take_idx! - before.dmm_outbox_take_idx!).toBe(0);
    expect(after.dmm_outbox_pkey! - before.dmm_outbox_pkey!).toBeLessThanOrEqual(picked.length);
    await sql.close();
  });
});

describe("claimKeys for an identity named by two batch tokens in one take", () => {
  it("claims it by the newer token's row, so that an older token does not leave it to the row being settled", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "x", cache: "{}" }]);
    const [row] = await sql<{ id: string }[]>`select id::text from dmm.dmm_outbox where namespace = ${ns}`;
    const current = { row: Number(row!.id), bumps: 0 };
    // An older batch named x from a row since settled; the newer one names the row a relay is
    // settling now. Either order: the identity is claimed once.
    for (const order of [[{ row: current.row - 1, bumps: 0 }, current], [current, { row: current.row - 1, bumps: 3 }]]) {
      const statuses = await claimKeys(db, ns, "owner-1", 30_000, "k", ["x", "x"], order);
      expect(statuses.map((s) => s.status).sort()).toEqual(["claimed", "idle"]);
      await sql`update dmm.dmm_matter set lease_owner = null, lease_until = null where namespace = ${ns}`;
    }
    await sql.close();
  });
});

describe("takeAndClaim", () => {
  it("tells each claimed matter of one take why it runs: notify, retry, requeue, or recovery of an expired lease", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    const ids = ["new", "retried", "requeued", "recovered"];
    await notifyMatters(db, ns, ids.map((identity) => ({ kind: "k", identity, cache: "{}" })));
    await sql`delete from dmm.dmm_outbox where namespace = ${ns}`;
    const claimed = await claimKeys(db, ns, "owner-1", 30_000, "k", ["retried", "requeued"]);
    const run = (i: number) => (claimed[i] as { matter: { identity: string; epoch: number; generation: number } }).matter;
    await finishRuns(db, ns, [
      { owner: "owner-1", kind: "k", identity: "retried", epoch: run(0).epoch, generation: run(0).generation, outcome: "fail",
        base: {}, cache: null, error: "boom", dueInMs: 0, dueReason: "retry" },
      { owner: "owner-1", kind: "k", identity: "requeued", epoch: run(1).epoch, generation: run(1).generation, outcome: "ok",
        base: {}, cache: null, error: null, dueInMs: 0, dueReason: "requeue" },
    ]);
    // A lease that runs out: its worker died.
    await claimKeys(db, ns, "owner-2", 1, "k", ["recovered"]);
    await waitFor("the lease to expire", async () => {
      const [r] = await sql`select lease_until < now() as gone from dmm.dmm_matter where namespace = ${ns} and identity = 'recovered'`;
      return r!.gone === true;
    });
    await sql`insert into dmm.dmm_outbox (namespace, kind, identity) select ${ns}, 'k', unnest(${pgArray(ids)}::text[])`;
    const { claimed: taken } = await takeAndClaim(db, ns, "owner-3", 30_000, "k", 10);
    expect(Object.fromEntries(taken.map((m) => [m.identity, m.reason]))).toEqual({
      new: "notify", retried: "retry", requeued: "requeue", recovered: "recovery",
    });
    await sql.close();
  });
});

describe("rows", () => {
  it("runs dmm's statements as prepared statements, parsed once per connection", async () => {
    const sql = env.sql({ max: 1 });
    const db = drizzle(sql);
    const ns = env.namespace();
    for (let i = 0; i < 3; i++) await notifyMatters(db, ns, [{ kind: "k", identity: `p${i}`, cache: "{}" }]);
    await takeAndClaim(db, ns, "owner-1", 30_000, "k", 10);
    await takeAndClaim(db, ns, "owner-1", 30_000, "k", 10);
    const prepared = await sql<{ statement: string }[]>`select statement from pg_prepared_statements`;
    expect(prepared.filter((p) => p.statement.includes("dmm.notify_matters("))).toHaveLength(1);
    expect(prepared.filter((p) => p.statement.includes("dmm.take_and_claim("))).toHaveLength(1);
    await sql.close();
  });

  it("keeps a client's prepare: false (for a transaction-mode pooler)", async () => {
    const sql = env.sql({ max: 1, prepare: false });
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "u", cache: "{}" }]);
    expect((await takeAndClaim(db, ns, "owner-1", 30_000, "k", 10)).claimed.map((m) => m.identity)).toEqual(["u"]);
    expect(await sql`select statement from pg_prepared_statements`).toEqual([]);
    await sql.close();
  });
});
