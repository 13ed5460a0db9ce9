/**
 * Invariants across processes: never two runs of one identity at once (checked by an external
 * record), and a `kill -9`'d worker's identities picked up by another process within seconds.
 */
import { describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { MODES, useTestEnvironment, type Mode } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();
const WORKER = fileURLToPath(new URL("../harness/worker-process.ts", import.meta.url));

class Probe {
  id = "";
  sleepMs = 0;
  slowOnce = false;
  identity() {
    return this.id;
  }
  async materialize() {
    throw new Error("runs only in the worker processes");
  }
}

async function startWorker(mode: Mode, namespace: string): Promise<ChildProcess> {
  const child = env.track(
    spawn(process.execPath, ["--import", "tsx", WORKER, mode, namespace, env.url], { stdio: ["ignore", "pipe", "inherit"] }),
  );
  await new Promise<void>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("ready")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`worker exited early with code ${code}`)));
  });
  return child;
}

async function createProbeRuns(sql: ReturnType<typeof env.sql>): Promise<void> {
  await sql`create table if not exists probe_runs (
    id bigserial primary key, identity text, pid int, generation bigint, reason text,
    started_at timestamptz, ended_at timestamptz)`;
}

/** The probe table, an app-side bucket that can notify probes, and two worker processes. */
async function startTwoWorkers(mode: Mode) {
  const sql = env.sql();
  await createProbeRuns(sql);
  const namespace = env.namespace();
  const bucket = await env.open(mode, {}, namespace);
  bucket.register("probe", Probe);
  const a = await startWorker(mode, namespace);
  const b = await startWorker(mode, namespace);
  return { sql, namespace, bucket, a, b };
}

async function stopWorker(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

describe.each(MODES)("with %s dispatch", (mode) => {
  it("never runs one identity in two worker processes at once under bursts of notifies", async () => {
    const { sql, namespace, bucket, a, b } = await startTwoWorkers(mode);
    // More identities than one process holds at once (8 running plus at most 32 claimed
    // ahead), so that both processes get work whichever wins the race for a burst.
    const ids = Array.from({ length: 60 }, (_, i) => `id-${i}`);
    for (let round = 0; round < 10; round++) {
      await bucket.notify(ids.map((id, i) => Object.assign(new Probe(), { id, sleepMs: (i * 7 + round * 3) % 25 })));
      await new Promise((r) => setTimeout(r, 15));
    }
    const last = await waitFor("every identity to reach its last generation", async () => {
      const [r] = await sql`select count(*)::int as n from dmm.dmm_matter
        where namespace = ${namespace} and observed_generation = generation and lease_owner is null`;
      return r!.n === ids.length;
    });
    expect(last).toBe(true);
    const overlaps = await sql`
      select a.identity, a.pid as pid_a, b.pid as pid_b from probe_runs a join probe_runs b
        on a.identity = b.identity and a.id < b.id
       and a.started_at < coalesce(b.ended_at, 'infinity') and b.started_at < coalesce(a.ended_at, 'infinity')`;
    expect(overlaps).toEqual([]);
    const pids = await sql`select distinct pid from probe_runs`;
    expect(pids.length).toBe(2);
    const [unfinished] = await sql`select count(*)::int as n from probe_runs where ended_at is null`;
    expect(unfinished!.n).toBe(0);
    await Promise.all([stopWorker(a), stopWorker(b)]);
    await bucket.close();
    await sql`drop table probe_runs`;
    await sql.close();
  });

  it("finishes a kill -9'd worker's slow run in another process within 2 s of the kill", async () => {
    const { sql, namespace, bucket, a, b } = await startTwoWorkers(mode);
    await bucket.notify(Object.assign(new Probe(), { id: "slow", sleepMs: 30_000, slowOnce: true }));
    const [first] = await waitFor("the slow run to start", async () => {
      const r = await sql`select pid from probe_runs where identity = 'slow'`;
      return r.length > 0 ? r : undefined;
    });
    const victim = first!.pid === a.pid ? a : b;
    const survivor = victim === a ? b : a;
    const killedAt = Date.now();
    victim.kill("SIGKILL");
    const [done] = await waitFor(
      "another process to finish the run",
      async () => {
        const r = await sql`select pid, reason, ended_at from probe_runs where identity = 'slow' and ended_at is not null`;
        return r.length > 0 ? r : undefined;
      },
      { timeoutMs: 10_000 },
    );
    const elapsed = Date.now() - killedAt;
    expect(done!.pid).toBe(survivor.pid);
    expect(done!.reason).toBe("recovery");
    expect(elapsed).toBeLessThan(2_000);
    await waitFor("the matter to be saved", async () => (await bucket.matter(Probe, "slow"))?.state === "ok");
    await stopWorker(survivor);
    await bucket.close();
    await sql`drop table probe_runs`;
    await sql.close();
  });
});
