/**
 * Outages: NATS going away (fall back to Postgres dispatch and come back), Postgres restarting
 * (loops back off and reconnect), and a worker that cannot heartbeat (its runs are aborted).
 * Uses private servers so the machine's shared ones are never disturbed.
 */
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { startNatsServer, startPostgresServer, type NatsServer, type PostgresServer } from "../../chaos/lib/index.js";
import { open, type Bucket } from "../../src/bucket.js";
import { LeaseLostError } from "../../src/errors.js";
import type { Context, Logger } from "../../src/types.js";
import type { RunEndEvent } from "../../src/worker/engine.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { deferred, waitFor } from "../harness/wait.js";

const env = useTestEnvironment();
const servers: { dispose(): Promise<void> }[] = [];
afterAll(async () => {
  for (const s of servers) await s.dispose();
});

/** A logger that keeps its lines, to check what was said and how often. */
function memoryLogger(lines: string[] = []): Logger & { lines: string[] } {
  const make = (): Logger => ({
    debug: () => {},
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
    child: () => make(),
  });
  return Object.assign(make(), { lines });
}

class Unit {
  id = "";
  identity() {
    return this.id;
  }
  async materialize() {}
}

function runsOf(bucket: Bucket): RunEndEvent[] {
  const runs: RunEndEvent[] = [];
  (bucket as unknown as { onRunEnd: (e: RunEndEvent) => void }).onRunEnd = (e) => runs.push(e);
  return runs;
}

describe("outages", () => {
  it("switches to Postgres dispatch while NATS is down, logs each switch once, and goes back when it returns", async () => {
    const nats: NatsServer = await startNatsServer();
    servers.push(nats);
    const log = memoryLogger();
    const ns = env.namespace();
    const bucket = await env.open("nats", { nats: nats.url, natsFallbackMs: 300, logger: log }, ns);
    const stream = bucket.register("unit", Unit);
    const runs = runsOf(bucket);
    const work = stream.work();
    const batch = (prefix: string) => Array.from({ length: 10 }, (_, i) => Object.assign(new Unit(), { id: `${prefix}${i}` }));

    await bucket.notify(batch("before"));
    await waitFor("runs with NATS up", () => runs.length >= 10);
    expect(bucket.natsFallback).toBe(false);

    await nats.stop();
    await waitFor("the switch to Postgres dispatch", () => bucket.natsFallback, { timeoutMs: 10_000 });
    await bucket.notify(batch("during"));
    await waitFor("runs while NATS is down", () => runs.length >= 20, { timeoutMs: 10_000 });

    await nats.start();
    await waitFor("the switch back to NATS", () => !bucket.natsFallback, { timeoutMs: 15_000 });
    await bucket.notify(batch("after"));
    await waitFor("runs with NATS back", () => runs.length >= 30, { timeoutMs: 10_000 });

    expect(new Set(runs.map((r) => r.identity)).size).toBe(30);
    expect(log.lines.filter((l) => l === "warn dispatch:fallback")).toHaveLength(1);
    expect(log.lines.filter((l) => l === "info dispatch:restored")).toHaveLength(1);
    await bucket.close();
    await work;
  });

  it("starts working a stream while NATS is down, through Postgres dispatch", async () => {
    const nats: NatsServer = await startNatsServer();
    servers.push(nats);
    const bucket = await env.open("nats", { nats: nats.url, natsFallbackMs: 300, logger: memoryLogger() });
    const stream = bucket.register("unit", Unit);
    const runs = runsOf(bucket);
    await nats.stop();
    const work = stream.work();
    await bucket.notify(Array.from({ length: 5 }, (_, i) => Object.assign(new Unit(), { id: `x${i}` })));
    await waitFor("runs while NATS is down", () => runs.length >= 5, { timeoutMs: 15_000 });
    expect(bucket.natsFallback).toBe(true);
    await nats.start();
    await waitFor("the switch back to NATS", () => !bucket.natsFallback, { timeoutMs: 15_000 });
    await bucket.close();
    await work;
  });

  it("keeps working across a Postgres restart, without crashing or running anything twice", async () => {
    const pg: PostgresServer = await startPostgresServer();
    servers.push(pg);
    const bucket = await open(env.namespace(), { database: pg.url, migrate: true, logger: memoryLogger(), sweepIntervalMs: 500 });
    const stream = bucket.register("unit", Unit);
    const runs = runsOf(bucket);
    const work = stream.work();
    await bucket.notify(Array.from({ length: 10 }, (_, i) => Object.assign(new Unit(), { id: `a${i}` })));
    await waitFor("runs before the restart", () => runs.length >= 10);

    await pg.restart();
    const notified = await waitFor(
      "a notify to go through after the restart",
      async () => {
        try {
          await bucket.notify(Array.from({ length: 10 }, (_, i) => Object.assign(new Unit(), { id: `b${i}` })));
          return true;
        } catch {
          return false;
        }
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    expect(notified).toBe(true);
    await waitFor("runs after the restart", () => runs.filter((r) => r.identity.startsWith("b") && r.outcome === "ok").length >= 10, { timeoutMs: 20_000 });
    const okRuns = runs.filter((r) => r.outcome === "ok");
    expect(okRuns.length).toBe(new Set(okRuns.map((r) => r.identity)).size);
    await bucket.close();
    await work;
  });

  it.each(MODES)("runs every matter notified before a Postgres crash, although the crash empties the unlogged outbox (%s dispatch)", async (mode) => {
    const pg: PostgresServer = await startPostgresServer();
    servers.push(pg);
    const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      const bucket = await env.open(mode, { database: pg.url, migrate: true, logger: memoryLogger(), sweepIntervalMs: 300 });
      const stream = bucket.register("unit", Unit);
      const runs = runsOf(bucket);
      await bucket.notify(Array.from({ length: 20 }, (_, i) => Object.assign(new Unit(), { id: `c${i}` })));
      expect((await sql`select count(*)::int as n from dmm.dmm_outbox`)[0]!.n).toBe(20);

      await pg.kill();
      await pg.start();
      // The crash reset the outbox: what is left to dispatch is known only from dmm_matter.
      const [after] = await waitFor("Postgres to answer after the crash", async () => {
        try {
          return await sql`select count(*)::int as n from dmm.dmm_outbox`;
        } catch {
          return null;
        }
      }, { timeoutMs: 20_000, intervalMs: 100 });
      expect(after!.n).toBe(0);

      const work = stream.work();
      await waitFor("a run of every matter notified before the crash", () => new Set(runs.filter((r) => r.outcome === "ok").map((r) => r.identity)).size === 20, { timeoutMs: 20_000 });
      await waitFor("every matter to be clean", async () => (await sql`select count(*)::int as n from dmm.dmm_matter where observed_generation < generation`)[0]!.n === 0);
      await bucket.close();
      await work;
    } finally {
      await sql.end({ timeout: 0 });
    }
  });

  it("aborts a run through ctx.signal when its worker cannot heartbeat its lease", async () => {
    const bucket = await env.open("postgres", { leaseMs: 1_500, heartbeatMs: 300, logger: memoryLogger() });
    const sql = env.sql();
    const started = deferred();
    let reason: unknown;
    class Held {
      id = "";
      identity() {
        return this.id;
      }
      async materialize(ctx: Context) {
        if (ctx.attempt > 1) return;
        started.resolve();
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        reason = ctx.signal.reason;
      }
    }
    const stream = bucket.register("held", Held);
    const work = stream.work();
    await bucket.notify(Object.assign(new Held(), { id: "h" }));
    await started.promise;
    // Kill the worker's session: the connection that holds its advisory lock and heartbeats.
    const [session] = await sql`select pid from pg_locks
      where locktype = 'advisory' and classid = 6581613 and objsubid = 2 and granted
        and database = (select oid from pg_database where datname = current_database())`;
    await sql`select pg_terminate_backend(${session!.pid})`;
    await waitFor("the run to be aborted", () => reason !== undefined, { timeoutMs: 10_000 });
    expect(reason).toBeInstanceOf(LeaseLostError);
    await waitFor("the matter to be run again and saved", async () => (await bucket.matter(Held, "h"))?.state === "ok", { timeoutMs: 15_000 });
    await bucket.close();
    await work;
    await sql.close();
  });
});
