/**
 * The example app, run as an outside user runs it (`tsx --conditions=dmm-source example/main.ts`,
 * importing only the package name): create players, run the worker against the flaky fleet,
 * change songs, let the observer catch drift, stop cleanly, and read it all back with debug.
 */
import { describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { NATS_URL } from "../harness/env.js";
import { useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function spawnExample(args: string[], extraEnv: Record<string, string> = {}): ChildProcess {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: env.url, DMM_LOG_LEVEL: "warn", ...extraEnv };
  if (!("NATS_URL" in extraEnv)) delete childEnv.NATS_URL;
  delete childEnv.FORCE_COLOR;
  return env.track(
    spawn(process.execPath, ["--conditions=dmm-source", "--import", "tsx", "example/main.ts", ...args], {
      cwd: ROOT,
      env: childEnv,
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
}

/** Runs an example command to its end. */
function example(args: string[], extraEnv: Record<string, string> = {}): Promise<Run> {
  const child = spawnExample(args, extraEnv);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += String(d)));
  child.stderr!.on("data", (d) => (stderr += String(d)));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** A running `example worker`, with its output and the fleet URL it printed. */
async function startWorker(args: string[], extraEnv: Record<string, string> = {}) {
  const child = spawnExample(["worker", ...args], extraEnv);
  const out = { stdout: "", stderr: "" };
  child.stdout!.on("data", (d) => (out.stdout += String(d)));
  child.stderr!.on("data", (d) => (out.stderr += String(d)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const fleetUrl = await waitFor("the worker to start", () => {
    if (child.exitCode !== null) throw new Error(`worker exited early: ${out.stderr}`);
    return out.stdout.includes("worker running") ? /fleet listening on (http:\/\/\S+)/.exec(out.stdout)?.[1] : undefined;
  }, { timeoutMs: 30_000, intervalMs: 50 });
  return {
    out,
    fleetUrl,
    /** Ctrl-C, then the exit code. */
    async interrupt(): Promise<number | null> {
      child.kill("SIGINT");
      return exited;
    },
  };
}

async function createPlayer(song: string, extra: string[] = [], extraEnv: Record<string, string> = {}): Promise<string> {
  const r = await example(["create", "--song", song, ...extra], extraEnv);
  expect(r.code, r.stderr).toBe(0);
  const last = r.stdout.trim().split("\n").at(-1)!;
  expect(last).toMatch(UUID);
  return last;
}

/** Rows of `example debug`: identity → [kind, state, gen/obs, attempts]. */
function debugRows(stdout: string): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const line of stdout.trim().split("\n").slice(1, -1)) {
    const [kind, identity, state, gen, attempts] = line.split(/\s{2,}/);
    rows.set(identity!, [kind!, state!, gen!, attempts!]);
  }
  return rows;
}

async function songs(fleetUrl: string): Promise<Map<string, string | null>> {
  const players = (await (await fetch(`${fleetUrl}/players`)).json()) as { id: string; song: string | null }[];
  return new Map(players.map((p) => [p.id, p.song]));
}

/** Matters of a namespace, straight from the database. */
async function matters(namespace = "example") {
  const sql = env.sql({ max: 1 });
  try {
    return await sql<{ identity: string; generation: number; observed: number; attempts: number; lease_owner: string | null; outbox: boolean; cache: { song?: string | null } }[]>`
      select m.identity, m.generation::int, m.observed_generation::int as observed, m.attempts, m.lease_owner, m.cache,
             exists (select 1 from dmm.dmm_outbox o where o.namespace = m.namespace and o.kind = m.kind and o.identity = m.identity) as outbox
      from dmm.dmm_matter m where m.namespace = ${namespace} order by identity`;
  } finally {
    await sql.close();
  }
}

const converged = async (ids: string[], namespace = "example") => {
  const rows = (await matters(namespace)).filter((m) => ids.includes(m.identity));
  return rows.length === ids.length && rows.every((m) => m.generation === m.observed && m.attempts === 0 && m.lease_owner === null);
};

describe("example app", () => {
  it("answers --help on every command, and exits 2 on an unknown one", async () => {
    const runs = await Promise.all([["--help"], ["worker", "--help"], ["create", "-h"], ["set-song", "--help"], ["debug", "--help"], ["dance"]].map((a) => example(a)));
    for (const r of runs.slice(0, -1)) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain("Usage: npm run example --");
    }
    expect(runs.at(-1)!.code).toBe(2);
  });

  it("create commits the player and its notify in one transaction and prints the id last", async () => {
    const id = await createPlayer("Naima");
    const sql = env.sql({ max: 1 });
    try {
      const [player] = await sql`select desired_song from music_players where id = ${id}`;
      expect(player).toEqual({ desired_song: "Naima" });
      const [matter] = await sql`select generation::int as g, observed_generation::int as o, cache from dmm.dmm_matter
                                 where namespace = 'example' and kind = 'music' and identity = ${id}`;
      expect(matter).toEqual({ g: 1, o: 0, cache: { playerId: id } });
      expect(await sql`select 1 from dmm.dmm_outbox where namespace = 'example' and identity = ${id}`).toHaveLength(1);
      // The app's migrations are recorded in its own table, apart from dmm's.
      const [tables] = await sql`select to_regclass('drizzle.example_migrations') is not null as app,
                                        to_regclass('dmm.dmm_migrations') is not null as dmm`;
      expect(tables).toEqual({ app: true, dmm: true });
    } finally {
      await sql.close();
    }
  });

  it("players created before the worker starts converge despite a flaky fleet; Ctrl-C stops cleanly and debug lists them ok", async () => {
    const ids = await Promise.all(["So What", "Take Five", "Giant Steps"].map((s) => createPlayer(s)));
    const worker = await startWorker(["--fail-rate", "0.3", "--latency-ms", "5", "--report-ms", "200"]);
    await waitFor("all three players to converge", () => converged(ids), { timeoutMs: 30_000, intervalMs: 100 });
    const playing = await songs(worker.fleetUrl);
    expect(ids.map((id) => playing.get(id))).toEqual(["So What", "Take Five", "Giant Steps"]);
    expect(await worker.interrupt()).toBe(0);
    expect(worker.out.stdout).toContain("stopped cleanly");

    const debug = await example(["debug"]);
    expect(debug.code, debug.stderr).toBe(0);
    expect(debug.stdout).not.toMatch(/\x1b\[/);
    const rows = debugRows(debug.stdout);
    for (const id of ids) expect(rows.get(id)?.slice(0, 2)).toEqual(["music", "ok"]);
    expect(debug.stdout.split("\n")[0]).toMatch(/^KIND\s+IDENTITY\s+STATE\s+GEN\/OBS\s+ATTEMPTS\s+NEXT DUE\s+LAST ERROR$/);

    const detail = await example(["debug", ids[1]!]);
    expect(detail.code, detail.stderr).toBe(0);
    expect(detail.stdout).toContain(`player ${ids[1]}: desired song "Take Five"`);
    expect(detail.stdout).toMatch(/^state\s+ok$/m);
    expect(detail.stdout).toContain('"song": "Take Five"');
    expect(detail.stdout).toMatch(/^lease\s+free/m);
  });

  it("set-song while the worker runs makes the player switch, and the observer undoes a switch by hand", async () => {
    const id = await createPlayer("Autumn Leaves");
    const worker = await startWorker(["--fail-rate", "0", "--latency-ms", "5", "--report-ms", "100"]);
    try {
      await waitFor("the first song", async () => (await songs(worker.fleetUrl)).get(id) === "Autumn Leaves", { timeoutMs: 20_000 });
      const set = await example(["set-song", id, "Footprints"]);
      expect(set.code, set.stderr).toBe(0);
      expect(set.stdout).toContain('desired song "Footprints" (was "Autumn Leaves")');
      await waitFor("the new song", async () => (await songs(worker.fleetUrl)).get(id) === "Footprints", { timeoutMs: 20_000 });
      await waitFor("the run to finish", () => converged([id]), { timeoutMs: 20_000 });
      const before = (await matters()).find((m) => m.identity === id)!;

      // Someone at the player switches it; only the fleet's report tells dmm.
      const press = await fetch(`${worker.fleetUrl}/players/${id}/press`, { method: "POST", body: JSON.stringify({ song: "Muzak" }) });
      expect(press.status).toBe(200);
      await waitFor("the observer's notify to put the song back", async () => {
        const m = (await matters()).find((x) => x.identity === id)!;
        return m.generation > before.generation && (await songs(worker.fleetUrl)).get(id) === "Footprints" && (await converged([id]));
      }, { timeoutMs: 20_000 });
      expect(await worker.interrupt()).toBe(0);
      expect(worker.out.stdout).toMatch(/observer notified [1-9]\d* time/);
    } finally {
      await worker.interrupt();
    }
  });

  it("set-song and debug refuse a malformed id with exit 2 and an unknown player with exit 1", async () => {
    const [badSet, badDebug, unknownSet, unknownDebug] = await Promise.all([
      example(["set-song", "nope", "x"]),
      example(["debug", "nope"]),
      example(["set-song", "01234567-89ab-7def-8123-456789abcdef", "x"]),
      example(["debug", "01234567-89ab-7def-8123-456789abcdef"]),
    ]);
    expect([badSet.code, badDebug.code, unknownSet.code, unknownDebug.code]).toEqual([2, 2, 1, 1]);
    expect(unknownSet.stderr).toContain("No player 01234567-89ab-7def-8123-456789abcdef");
  });

  it("Ctrl-C while runs are in flight lets them finish: no lease left, nothing dirty lost, and a new worker completes the rest", async () => {
    const ids = await Promise.all(["Naima", "So What", "Moanin'", "Footprints"].map((s) => createPlayer(s)));
    // Slow players (each run makes two ~1 s requests) and two runs at a time: Ctrl-C lands mid-run.
    // The debug log says which runs started and ended (claimed-ahead matters hold leases too,
    // but are released unrun on stop, so a lease alone does not mean a run is in flight).
    const worker = await startWorker(["--fail-rate", "0", "--latency-ms", "1000", "--concurrency", "2"], { DMM_LOG_LEVEL: "debug" });
    const running = () => {
      const log = worker.out.stdout + worker.out.stderr;
      const count = new Map<string, number>();
      for (const [, event, key] of log.matchAll(/materialize:(start|success|error|parked|lease-lost) .*?key=(\S+)/g)) {
        count.set(key!, (count.get(key!) ?? 0) + (event === "start" ? 1 : -1));
      }
      return [...count].filter(([key, n]) => n > 0 && ids.includes(key)).map(([key]) => key);
    };
    const inFlight = await waitFor("a run in flight", () => (running().length > 0 ? running() : undefined), { timeoutMs: 20_000 });
    expect(await worker.interrupt()).toBe(0);
    expect(worker.out.stdout).toContain("stopped cleanly");
    expect(worker.out.stderr).not.toContain("worker:stop:abort");

    const after = (await matters()).filter((m) => ids.includes(m.identity));
    for (const m of after) {
      expect(m.lease_owner, m.identity).toBeNull();
      // Finished, or still dirty with its outbox row: nothing waits on a lost token.
      expect(m.generation === m.observed || m.outbox, m.identity).toBe(true);
    }
    // The runs that were in flight were not cut in half: they finished and saved their cache.
    for (const id of inFlight) {
      const m = after.find((x) => x.identity === id)!;
      expect(m.observed, id).toBe(m.generation);
      expect(m.cache.song, id).toBeTruthy();
    }

    const next = await startWorker(["--fail-rate", "0", "--latency-ms", "5"]);
    await waitFor("the rest to converge", () => converged(ids), { timeoutMs: 30_000, intervalMs: 100 });
    expect(await next.interrupt()).toBe(0);
  });

  it("the worker dispatches through NATS JetStream when NATS_URL is set", async () => {
    const ns = env.namespace("ex");
    const ids = await Promise.all(["Naima", "Take Five"].map((s) => createPlayer(s, ["--namespace", ns])));
    const worker = await startWorker(["--namespace", ns, "--fail-rate", "0.2", "--latency-ms", "5"], { NATS_URL });
    expect(worker.out.stdout).toContain(`namespace ${ns}, dispatch nats`);
    await waitFor("both players to converge over NATS", () => converged(ids, ns), { timeoutMs: 30_000, intervalMs: 100 });
    expect(await worker.interrupt()).toBe(0);
    const debug = await example(["debug", "--namespace", ns]);
    const rows = debugRows(debug.stdout);
    for (const id of ids) expect(rows.get(id)?.[1]).toBe("ok");
  });
});
