/**
 * The materializer contract and the invariants that both dispatch modes share, on the real
 * Postgres and NATS of the machine.
 */
import { describe, expect, it } from "vitest";
import { drizzle } from "drizzle-orm/postgres-js";
import { sql as dsql } from "drizzle-orm";
import type { Context } from "../../src/types.js";
import { LeaseLostError, RetryAfterError, RunTimeoutError, TerminalError } from "../../src/errors.js";
import type { BucketInternals } from "../../src/bucket.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { deferred, waitFor } from "../harness/wait.js";
import { quiesce } from "../harness/quiesce.js";

const env = useTestEnvironment();

function internals(bucket: unknown): BucketInternals {
  return bucket as BucketInternals;
}

/** Collects run-end events of a bucket. */
function recordRuns(bucket: unknown): RunEndEvent[] {
  const events: RunEndEvent[] = [];
  internals(bucket).onRunEnd = (e) => events.push(e);
  return events;
}

describe.each(MODES)("with %s dispatch", (mode) => {
  it("materializes 100 notified identities once each and saves their caches", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    class Counter {
      id = "";
      seen = 0;
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        this.seen = ctx.generation * 10;
      }
    }
    const stream = bucket.register("counter", Counter);
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 8 });
    await bucket.notify(Array.from({ length: 100 }, (_, i) => Object.assign(new Counter(), { id: `c${i}` })));
    await waitFor("100 runs", () => runs.length >= 100);
    await quiesce(bucket, sql);
    expect(runs.length).toBe(100);
    expect(new Set(runs.map((r) => r.identity)).size).toBe(100);
    expect(runs.every((r) => r.outcome === "ok" && r.reason === "notify")).toBe(true);
    const view = await bucket.matter(Counter, "c42");
    expect(view).toMatchObject({ cache: { id: "c42", seen: 10 }, generation: 1, observedGeneration: 1, state: "ok", attempts: 0 });
    await bucket.close();
    await work;
    await sql.close();
  });

  it("sends each hot-path statement (take, claim, finish, relay) prepared, so that it is one round trip and no parse", async () => {
    // The app's own Drizzle database, its client's unsafe() watched: Drizzle's execute() sends
    // statements unnamed, which postgres.js then describes first (two round trips and a parse
    // and plan every time).
    const client = env.sql({ max: 10 });
    const sent: { text: string; prepared: boolean }[] = [];
    const unsafe = client.unsafe.bind(client);
    client.unsafe = ((text: string, params?: never[], options?: { prepare?: boolean }) => {
      sent.push({ text, prepared: options?.prepare === true });
      return unsafe(text, params, options);
    }) as typeof client.unsafe;
    const bucket = await env.open(mode, { database: drizzle(client) });
    class Plain {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("plain", Plain);
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 4 });
    await bucket.notify(Array.from({ length: 20 }, (_, i) => Object.assign(new Plain(), { id: `p${i}` })));
    await waitFor("20 runs", () => runs.length >= 20);
    await quiesce(bucket, client);
    await bucket.close();
    await work;
    const hot = sent.filter((s) => /dmm\.(finish_runs|take_and_claim|claim_keys|relay_take|relay_settle)\(/.test(s.text));
    expect(hot.some((s) => s.text.includes("dmm.finish_runs(")), "a finish was sent").toBe(true);
    expect(hot.filter((s) => !s.prepared).map((s) => s.text.replace(/\s+/g, " ").slice(0, 60))).toEqual([]);
    await client.close();
  });

  it("turns 50 notifies during one 300 ms run into exactly one more run", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    const started = deferred();
    const notified = deferred();
    class Slow {
      id = "";
      note = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.generation === 1) {
          started.resolve();
          // Until all 50 notifies have committed.
          await notified.promise;
        }
      }
    }
    const stream = bucket.register("slow", Slow);
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 4 });
    await bucket.notify(Object.assign(new Slow(), { id: "one" }));
    await started.promise;
    for (let i = 0; i < 50; i++) await bucket.notify(Object.assign(new Slow(), { id: "one", note: `n${i}` }));
    notified.resolve();
    await waitFor("the follow-up run", () => runs.length >= 2);
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.outcome)).toEqual(["ok", "ok"]);
    const view = await bucket.matter(Slow, "one");
    expect(view?.generation).toBe(51);
    expect(view?.observedGeneration).toBe(51);
    expect(view?.cache.note).toBe("n49");
    await bucket.close();
    await work;
    await sql.close();
  });

  it("retries a failing materializer with backoff until it converges", async () => {
    const bucket = await env.open(mode);
    class Flaky {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt <= 2) throw new Error(`boom ${ctx.attempt}`);
      }
    }
    const stream = bucket.register("flaky", Flaky, { backoffBaseMs: 20, backoffMaxMs: 100 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Flaky(), { id: "f" }));
    await waitFor("three runs", () => runs.length >= 3);
    expect(runs.map((r) => [r.outcome, r.reason, r.attempt])).toEqual([
      ["fail", "notify", 1],
      ["fail", "retry", 2],
      ["ok", "retry", 3],
    ]);
    const view = await bucket.matter(Flaky, "f");
    expect(view).toMatchObject({ state: "ok", attempts: 0, lastError: null, dueAt: null });
    await bucket.close();
    await work;
  });

  it("records a failure's attempts, error and due time while it backs off", async () => {
    const bucket = await env.open(mode);
    class Broken {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {
        throw new Error("upstream said no");
      }
    }
    const stream = bucket.register("broken", Broken, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Broken(), { id: "b" }));
    await waitFor("the failed run", () => runs.length >= 1);
    const view = await waitFor("the failure to be recorded", async () => {
      const v = await bucket.matter(Broken, "b");
      return v?.attempts === 1 ? v : undefined;
    });
    expect(view.state).toBe("failing");
    expect(view.lastError).toContain("upstream said no");
    expect(view.dueAt!.getTime()).toBeGreaterThan(Date.now() + 20_000);
    await bucket.close();
    await work;
  });

  it("parks a TerminalError until the next touch, then runs again", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    let fail = true;
    class Picky {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {
        if (fail) throw new TerminalError("the player does not exist");
      }
    }
    const stream = bucket.register("picky", Picky);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Picky(), { id: "p" }));
    await waitFor("the parked run", () => runs.length >= 1);
    await quiesce(bucket, sql);
    await internals(bucket).sweepNow();
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.outcome)).toEqual(["park"]);
    expect(await bucket.matter(Picky, "p")).toMatchObject({ state: "parked", attempts: 1 });
    fail = false;
    await bucket.touch(Picky, "p");
    await waitFor("the run after the touch", () => runs.length >= 2);
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.outcome)).toEqual(["park", "ok"]);
    expect(await bucket.matter(Picky, "p")).toMatchObject({ state: "ok", attempts: 0, lastError: null });
    await bucket.close();
    await work;
    await sql.close();
  });

  it("retries a RetryAfterError after its delay rather than the backoff", async () => {
    const bucket = await env.open(mode);
    const starts: number[] = [];
    class Limited {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        starts.push(Date.now());
        if (ctx.attempt === 1) throw new RetryAfterError("429 Too Many Requests", 400);
      }
    }
    const stream = bucket.register("limited", Limited, { backoffBaseMs: 60_000 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Limited(), { id: "l" }));
    await waitFor("the retry", () => runs.length >= 2);
    expect(runs.map((r) => r.outcome)).toEqual(["fail", "ok"]);
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(390);
    await bucket.close();
    await work;
  });

  it("runs again after ctx.requeueAfter, with reason requeue", async () => {
    const bucket = await env.open(mode);
    class Poller {
      id = "";
      polls = 0;
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        this.polls++;
        if (this.polls < 3) ctx.requeueAfter(50);
      }
    }
    const stream = bucket.register("poller", Poller);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Poller(), { id: "q" }));
    await waitFor("three polls", () => runs.length >= 3);
    expect(runs.map((r) => r.reason)).toEqual(["notify", "requeue", "requeue"]);
    expect((await bucket.matter(Poller, "q"))?.cache.polls).toBe(3);
    await bucket.close();
    await work;
  });

  it("resyncs every matter of a kind with a resync period", async () => {
    const bucket = await env.open(mode);
    class Synced {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("synced", Synced, { resyncPeriodMs: 100 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Synced(), { id: "s" }));
    await waitFor("two resyncs", () => runs.filter((r) => r.reason === "resync").length >= 2);
    await bucket.close();
    await work;
  });

  it("never runs a notify made in a rolled-back transaction, and always one made in a committed one", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    const db = drizzle(sql);
    await sql`create table if not exists app_player (id text primary key)`;
    class Player {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("player", Player);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await db
      .transaction(async (tx) => {
        await tx.execute(dsql`insert into app_player (id) values ('rolled')`);
        await bucket.notify(Object.assign(new Player(), { id: "rolled" }), { tx });
        tx.rollback();
      })
      .catch(() => {});
    await db.transaction(async (tx) => {
      await tx.execute(dsql`insert into app_player (id) values ('kept')`);
      await bucket.notify(Object.assign(new Player(), { id: "kept" }), { tx });
    });
    await waitFor("the committed notify's run", () => runs.length >= 1);
    await quiesce(bucket, sql);
    await internals(bucket).sweepNow();
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.identity)).toEqual(["kept"]);
    expect(await bucket.matter(Player, "rolled")).toBeUndefined();
    const [outbox] = await sql`select count(*)::int as n from dmm.dmm_outbox where identity = 'rolled'`;
    expect(outbox!.n).toBe(0);
    await bucket.close();
    await work;
    await sql`drop table app_player`;
    await sql.close();
  });

  it("merges a notify that arrived during a run: the notify's fields win, the run's other fields stay", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    const started = deferred();
    const release = deferred();
    class Merge {
      id = "";
      desired = "a";
      observed = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.generation === 1) {
          started.resolve();
          await release.promise;
        }
        this.observed = `seen-${this.desired}`;
      }
    }
    const stream = bucket.register("merge", Merge);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Merge(), { id: "m", desired: "a" }));
    await started.promise;
    await bucket.notify(Object.assign(new Merge(), { id: "m", desired: "b" }));
    release.resolve();
    await waitFor("the second run", () => runs.length >= 2);
    await quiesce(bucket, sql);
    expect((await bucket.matter(Merge, "m"))?.cache).toEqual({ id: "m", desired: "b", observed: "seen-b" });
    await bucket.close();
    await work;
    await sql.close();
  });

  it("keeps a run that lost its lease from saving its cache, committing ctx.transaction or ctx.notify", async () => {
    const bucket = await env.open(mode, { heartbeatMs: 60_000, leaseMs: 120_000, sweepIntervalMs: 60_000 });
    const sql = env.sql();
    await sql`create table if not exists side_effect (id text)`;
    const started = deferred();
    const expired = deferred();
    let txError: unknown;
    class Zombie {
      id = "";
      value = "original";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (this.id !== "z") return;
        started.resolve();
        await expired.promise;
        ctx.notify(Object.assign(new Zombie(), { id: "child" }));
        try {
          await ctx.transaction(async (tx) => {
            await tx.execute(dsql`insert into side_effect (id) values ('zombie')`);
          });
        } catch (err) {
          txError = err;
        }
        this.value = "zombie";
      }
    }
    const stream = bucket.register("zombie", Zombie);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Zombie(), { id: "z" }));
    await started.promise;
    await sql`update dmm.dmm_matter set lease_until = now() - interval '1 second' where namespace = ${bucket.namespace} and identity = 'z'`;
    expired.resolve();
    await waitFor("the zombie run to end", () => runs.length >= 1);
    expect(runs[0]!.outcome).toBe("lost");
    expect(txError).toBeInstanceOf(LeaseLostError);
    expect((await bucket.matter(Zombie, "z"))?.cache.value).toBe("original");
    expect(await bucket.matter(Zombie, "child")).toBeUndefined();
    const [side] = await sql`select count(*)::int as n from side_effect`;
    expect(side!.n).toBe(0);
    await bucket.close();
    await work;
    await sql`drop table side_effect`;
    await sql.close();
  });

  it("commits ctx.notify and ctx.transaction writes of a run that keeps its lease", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    await sql`create table if not exists parent_log (id text)`;
    class Parent {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (this.id === "parent") {
          ctx.notify(Object.assign(new Parent(), { id: "child-1" }));
          ctx.touch(Parent, "child-2");
          await ctx.transaction(async (tx) => {
            await tx.execute(dsql`insert into parent_log (id) values (${this.id})`);
          });
        }
      }
    }
    const stream = bucket.register("parent", Parent);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Parent(), { id: "parent" }));
    await waitFor("the children's runs", () => runs.length >= 3);
    await quiesce(bucket, sql);
    expect(runs.map((r) => r.identity).sort()).toEqual(["child-1", "child-2", "parent"]);
    const [log] = await sql`select count(*)::int as n from parent_log`;
    expect(log!.n).toBe(1);
    await bucket.close();
    await work;
    await sql`drop table parent_log`;
    await sql.close();
  });

  it("holds no connection idle in transaction while a materializer sleeps for 5 s", async () => {
    const bucket = await env.open(mode);
    const sql = env.sql();
    const started = deferred();
    let done = false;
    class Sleeper {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {
        started.resolve();
        await new Promise((r) => setTimeout(r, 5_000));
        done = true;
      }
    }
    const stream = bucket.register("sleeper", Sleeper);
    const work = stream.work();
    await bucket.notify(Object.assign(new Sleeper(), { id: "zz" }));
    await started.promise;
    const db = new URL(env.url).pathname.slice(1);
    let samples = 0;
    while (!done) {
      const idle = await sql`select pid, state, query from pg_stat_activity
                             where datname = ${db} and state like 'idle in transaction%'`;
      expect(idle).toEqual([]);
      samples++;
      // Sampling the run's 5 s, not waiting for anything.
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(samples).toBeGreaterThan(20);
    await bucket.close();
    await work;
    await sql.close();
  });

  it("runs every matter whose token was lost, within the sweep interval", async () => {
    const bucket = await env.open(mode, { sweepIntervalMs: 300 });
    const sql = env.sql();
    class Lost {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const stream = bucket.register("lost", Lost);
    const runs = recordRuns(bucket);
    await bucket.notify(Array.from({ length: 20 }, (_, i) => Object.assign(new Lost(), { id: `l${i}` })));
    if (mode === "nats") {
      await internals(bucket).relayNow();
      await internals(bucket).tokens!.purge();
    } else {
      await sql`delete from dmm.dmm_outbox where namespace = ${bucket.namespace}`;
    }
    const [outbox] = await sql`select count(*)::int as n from dmm.dmm_outbox where namespace = ${bucket.namespace}`;
    expect(outbox!.n).toBe(0);
    const t0 = Date.now();
    const work = stream.work();
    await waitFor("all 20 runs", () => new Set(runs.map((r) => r.identity)).size === 20, { timeoutMs: 10_000 });
    const elapsed = Date.now() - t0;
    expect(bucket.stats().swept).toBeGreaterThanOrEqual(20);
    // Lost at notify time, so the sweep finds them once their dispatch grace (one interval) is over.
    expect(elapsed).toBeLessThan(5_000);
    await bucket.close();
    await work;
    await sql.close();
  });

  it("aborts ctx.signal at the kind's timeout and retries the run", async () => {
    const bucket = await env.open(mode);
    let reason: unknown;
    class Stuck {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt === 1) {
          await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
          reason = ctx.signal.reason;
        }
      }
    }
    const stream = bucket.register("stuck", Stuck, { timeoutMs: 200, backoffBaseMs: 20 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Stuck(), { id: "s" }));
    await waitFor("the retry", () => runs.length >= 2);
    expect(runs.map((r) => r.outcome)).toEqual(["fail", "ok"]);
    expect(reason).toBeInstanceOf(RunTimeoutError);
    await bucket.close();
    await work;
  });

  it("contains a materializer that never settles and throws non-Error values", async () => {
    const bucket = await env.open(mode);
    class Wild {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt === 1) throw "a string";
        if (ctx.attempt === 2) throw { code: 42 };
        if (ctx.attempt === 3) await new Promise(() => {});
      }
    }
    const stream = bucket.register("wild", Wild, { timeoutMs: 150, backoffBaseMs: 10 });
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Wild(), { id: "w" }));
    await waitFor("four runs", () => runs.length >= 4);
    expect(runs.map((r) => r.outcome)).toEqual(["fail", "fail", "fail", "ok"]);
    expect(runs[0]!.error?.message).toContain("a string");
    expect(runs[1]!.error?.message).toContain('{"code":42}');
    expect(runs[2]!.error).toBeInstanceOf(RunTimeoutError);
    await bucket.close();
    await work;
  });

  it("keeps the lease of a run that lasts longer than the lease through heartbeats", async () => {
    const bucket = await env.open(mode, { leaseMs: 800, heartbeatMs: 150 });
    class Marathon {
      id = "";
      done = false;
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        await new Promise((r) => setTimeout(r, 2_000));
        if (ctx.signal.aborted) throw ctx.signal.reason;
        this.done = true;
      }
    }
    const stream = bucket.register("marathon", Marathon);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Marathon(), { id: "m" }));
    await waitFor("the long run to end", () => runs.length >= 1, { timeoutMs: 10_000 });
    expect(runs[0]!.outcome).toBe("ok");
    expect((await bucket.matter(Marathon, "m"))?.cache.done).toBe(true);
    await bucket.close();
    await work;
  });

  it("aborts a run through ctx.signal once a heartbeat finds its lease taken over, and writes nothing of it", async () => {
    const bucket = await env.open(mode, { leaseMs: 3_000, heartbeatMs: 200 });
    const sql = env.sql();
    const started = deferred();
    let reason: unknown;
    class Usurped {
      id = "";
      value = "original";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt > 1 || ctx.reason !== "notify") return;
        started.resolve();
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        reason = ctx.signal.reason;
        this.value = "usurped";
      }
    }
    const stream = bucket.register("usurped", Usurped);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Usurped(), { id: "u" }));
    await started.promise;
    // Another worker's claim: a new owner and epoch on the matter, as after a take-over.
    await sql`update dmm.dmm_matter set lease_owner = 'another-worker', lease_epoch = lease_epoch + 1
              where namespace = ${bucket.namespace} and identity = 'u'`;
    await waitFor("the run to be aborted", () => reason !== undefined, { timeoutMs: 10_000 });
    expect(reason).toBeInstanceOf(LeaseLostError);
    await waitFor("the run to end", () => runs.length >= 1);
    expect(runs[0]!.outcome).toBe("lost");
    const [row] = await sql`select cache, lease_owner from dmm.dmm_matter where namespace = ${bucket.namespace} and identity = 'u'`;
    expect(row).toMatchObject({ cache: { id: "u", value: "original" }, lease_owner: "another-worker" });
    await sql`update dmm.dmm_matter set lease_owner = null, lease_until = null where namespace = ${bucket.namespace} and identity = 'u'`;
    await bucket.close();
    await work;
    await sql.close();
  });

  it("gives back prefetched matters unrun on close, without counting an attempt", async () => {
    const bucket = await env.open(mode, { shutdownGraceMs: 5_000 });
    const sql = env.sql();
    const started = deferred();
    const release = deferred();
    class Queued {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {
        started.resolve();
        await release.promise;
      }
    }
    const stream = bucket.register("queued", Queued);
    const runs = recordRuns(bucket);
    const work = stream.work({ concurrency: 1, prefetch: 10 });
    await bucket.notify(Array.from({ length: 6 }, (_, i) => Object.assign(new Queued(), { id: `q${i}` })));
    await started.promise;
    // The close begins with a run in flight and the rest prefetched; the run then ends.
    const closing = bucket.close();
    release.resolve();
    await closing;
    await work;
    expect(runs.length).toBeGreaterThanOrEqual(1);
    const rows = await sql`select identity, attempts, lease_owner, generation > observed_generation as dirty
                           from dmm.dmm_matter where namespace = ${bucket.namespace} order by identity`;
    expect(rows.every((r) => r.attempts === 0 && r.lease_owner === null)).toBe(true);
    const unrun = rows.filter((r) => r.dirty).map((r) => r.identity);
    expect(unrun.length).toBe(6 - runs.length);
    const outbox = await sql`select identity from dmm.dmm_outbox where namespace = ${bucket.namespace} order by identity`;
    expect(outbox.map((r) => r.identity)).toEqual(unrun);
    await sql.close();
  });

  it("stops one stream when its signal aborts, while the bucket and other streams go on", async () => {
    const bucket = await env.open(mode);
    class First {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    class Second {
      id = "";
      identity() {
        return this.id;
      }
      async materialize() {}
    }
    const first = bucket.register("first", First);
    const second = bucket.register("second", Second);
    const runs = recordRuns(bucket);
    const stop = new AbortController();
    const firstWork = first.work({ signal: stop.signal });
    const secondWork = second.work();
    stop.abort();
    await firstWork;
    await bucket.notify([Object.assign(new First(), { id: "f" }), Object.assign(new Second(), { id: "s" })]);
    await waitFor("the second stream's run", () => runs.some((r) => r.kind === "second"));
    expect((await bucket.matter(First, "f"))?.state).toBe("pending");
    await bucket.close();
    await secondWork;
    expect(runs.map((r) => r.kind)).toEqual(["second"]);
  });

  it("lets close() finish the run in flight, and may be called twice", async () => {
    const bucket = await env.open(mode);
    const started = deferred();
    const release = deferred();
    class Graceful {
      id = "";
      done = false;
      identity() {
        return this.id;
      }
      async materialize() {
        started.resolve();
        await release.promise;
        this.done = true;
      }
    }
    const stream = bucket.register("graceful", Graceful);
    const runs = recordRuns(bucket);
    const work = stream.work();
    await bucket.notify(Object.assign(new Graceful(), { id: "g" }));
    await started.promise;
    // Both closes begin while the run is in flight; the run ends after that.
    const closing = Promise.all([bucket.close(), bucket.close()]);
    release.resolve();
    await closing;
    await work;
    expect(runs.map((r) => r.outcome)).toEqual(["ok"]);
    const sql = env.sql();
    const [row] = await sql`select cache, lease_owner from dmm.dmm_matter where namespace = ${bucket.namespace}`;
    expect(row!.cache).toEqual({ id: "g", done: true });
    expect(row!.lease_owner).toBeNull();
    await sql.close();
  });

  it("releases a run that outlives the shutdown grace without counting an attempt", async () => {
    const bucket = await env.open(mode, { shutdownGraceMs: 100 });
    const started = deferred();
    class Long {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        started.resolve();
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        throw ctx.signal.reason;
      }
    }
    const stream = bucket.register("long", Long);
    const work = stream.work();
    await bucket.notify(Object.assign(new Long(), { id: "x" }));
    await started.promise;
    await bucket.close();
    await work;
    const sql = env.sql();
    const [row] = await sql`select attempts, lease_owner, generation, observed_generation from dmm.dmm_matter where namespace = ${bucket.namespace}`;
    expect(row).toMatchObject({ attempts: 0, lease_owner: null });
    expect(Number(row!.generation)).toBeGreaterThan(Number(row!.observed_generation));
    const [outbox] = await sql`select count(*)::int as n from dmm.dmm_outbox where namespace = ${bucket.namespace}`;
    expect(outbox!.n).toBe(1);
    await sql.close();
  });
});
