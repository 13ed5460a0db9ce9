/**
 * The `dmm` command line, run as a subprocess the way scripts run it: output, exit codes
 * (0 ok, 1 failure, 2 usage, 3 schema version mismatch) and effects on a real database.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { open } from "../../src/bucket.js";
import { TerminalError } from "../../src/errors.js";
import { createConsoleLogger } from "../../src/log.js";
import type { Context } from "../../src/types.js";
import { TEMPLATE_DB, TEST_DB_PREFIX, urlFor } from "../harness/env.js";
import { useTestEnvironment } from "../harness/setup.js";
import { waitFor } from "../harness/wait.js";
import { expectedMigrations } from "../../src/store/migrate.js";

/** The dmm migrations this version ships, and the last one. */
const DMM_MIGRATIONS = expectedMigrations();
const LATEST_MIGRATION = DMM_MIGRATIONS[DMM_MIGRATIONS.length - 1]!.tag;

const env = useTestEnvironment();
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `dmm <args>` from source, against this file's database unless `extraEnv` says otherwise. */
function dmm(args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<Result> {
  const childEnv: Record<string, string | undefined> = { ...process.env, DATABASE_URL: env.url, DMM_NAMESPACE: undefined, FORCE_COLOR: undefined, NO_COLOR: undefined, ...extraEnv };
  for (const k of Object.keys(childEnv)) if (childEnv[k] === undefined) delete childEnv[k];
  const child = env.track(
    spawn(process.execPath, ["--conditions=dmm-source", "--import", "tsx", "src/cli/main.ts", ...args], {
      cwd: ROOT,
      env: childEnv as NodeJS.ProcessEnv,
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += String(d)));
  child.stderr!.on("data", (d) => (stderr += String(d)));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Empty (or template-cloned) databases made by this file; dropped in afterAll. */
const extraDatabases: string[] = [];
async function createDatabase(fromTemplate: boolean): Promise<string> {
  const name = `${TEST_DB_PREFIX}cli_${randomBytes(4).toString("hex")}`;
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"${fromTemplate ? ` template "${TEMPLATE_DB}"` : ""}`);
  } finally {
    await admin.end();
  }
  extraDatabases.push(name);
  return urlFor(name);
}
afterAll(async () => {
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    for (const name of extraDatabases) await admin.unsafe(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
});

/** ok-* succeed, fail-* throw, park-* park; the cache records the runs. */
class Thing {
  id = "";
  runs = 0;
  static runsById = new Map<string, number>();
  identity() {
    return this.id;
  }
  async materialize(_ctx: Context) {
    this.runs++;
    Thing.runsById.set(this.id, (Thing.runsById.get(this.id) ?? 0) + 1);
    if (this.id.startsWith("fail-")) throw new Error(`boom on ${this.id}\nsecond line of the error`);
    if (this.id.startsWith("park-")) throw new TerminalError(`cannot ever do ${this.id}`);
  }
}

const thing = (id: string) => Object.assign(new Thing(), { id });

describe("dmm CLI", () => {
  let ns: string;

  beforeAll(async () => {
    // One namespace with matters in every state but running: ok, failing, parked, pending.
    ns = env.namespace("cli");
    const bucket = await open(ns, { database: env.url, logger: createConsoleLogger("silent") });
    try {
      const stream = bucket.register("thing", Thing, { backoffBaseMs: 600_000, backoffMaxMs: 600_000 });
      await bucket.notify([thing("ok-1"), thing("ok-2"), thing("fail-1"), thing("park-1")]);
      const stop = new AbortController();
      const working = stream.work({ signal: stop.signal });
      await waitFor("the first runs to settle", async () => {
        const states = (await bucket.matters()).map((m) => m.state);
        return states.length === 4 && !states.includes("pending") && !states.includes("running");
      });
      stop.abort();
      await working;
      await bucket.notify(thing("pending-1"));
    } finally {
      await bucket.close();
    }
  });

  it("answers --help on every command with its usage and the exit codes, exit 0", async () => {
    const runs = await Promise.all(
      [["--help"], ["help"], ["migrate", "--help"], ["status", "--help"], ["touch", "-h"], ["sql", "--help"], ["help", "touch"]].map((a) =>
        dmm(a),
      ),
    );
    for (const r of runs) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^Usage: dmm/);
      expect(r.stdout).toContain("Exit codes");
    }
    expect(runs[0]!.stdout).toMatch(/3\s+schema version mismatch/);
  });

  it("exits 2 with a usage message for an unknown command, an unknown option or a missing argument", async () => {
    const runs = await Promise.all([
      dmm([]),
      dmm(["frobnicate"]),
      dmm(["status", "--frobnicate"]),
      dmm(["touch", "thing"]),
      dmm(["status", "-n", "Not A Namespace"]),
      dmm(["status", "-n", ns, "--limit", "lots"]),
      dmm(["sql", "--since", "9999_nope"]),
      dmm(["migrate", "--database", "mysql://localhost/x"]),
    ]);
    for (const r of runs) expect(r.code, `${r.stdout}${r.stderr}`).toBe(2);
    expect(runs[1]!.stderr).toContain('Unknown command "frobnicate"');
    expect(runs[2]!.stderr).toContain("--frobnicate");
    expect(runs[4]!.stderr).toContain("a-z, 0-9");
    expect(runs[6]!.stderr).toContain("0001_outbox_trigger");
  });

  it("dmm status without a namespace exits 2 and lists the namespaces in the database", async () => {
    const r = await dmm(["status"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("needs a namespace");
    expect(r.stderr).toContain(ns);
  });

  it("dmm status lists every matter with its state as an aligned plain table when piped", async () => {
    const r = await dmm(["status", "-n", ns]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/\x1b\[/);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe(`namespace ${ns}; no workers registered`);
    expect(lines[1]).toMatch(/^KIND\s+IDENTITY\s+STATE\s+GEN\/OBS\s+ATTEMPTS\s+NEXT DUE\s+LAST ERROR$/);
    const row = (id: string) => lines.find((l) => l.includes(` ${id} `))!.split(/\s{2,}/);
    expect(row("ok-1").slice(0, 5)).toEqual(["thing", "ok-1", "ok", "1/1", "0"]);
    expect(row("fail-1").slice(0, 5)).toEqual(["thing", "fail-1", "failing", "1/0", "1"]);
    expect(row("fail-1")[5]).toMatch(/^retry in \d+m/);
    expect(row("fail-1")[6]).toBe("Error: boom on fail-1 …");
    expect(row("park-1").slice(0, 3)).toEqual(["thing", "park-1", "parked"]);
    expect(row("pending-1").slice(0, 4)).toEqual(["thing", "pending-1", "pending", "1/0"]);
    expect(lines.at(-1)).toBe("5 matters: 2 ok, 1 pending, 1 failing, 1 parked");
    const stateAt = lines[1]!.indexOf("STATE");
    for (const l of lines.slice(2, -1)) expect(l.slice(stateAt)).toMatch(/^(ok|pending|failing|parked) /);
  });

  it("dmm status colours the table when asked with --color", async () => {
    const r = await dmm(["status", "-n", ns, "--color"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("\x1b[32mok");
  });

  it("dmm status IDENTITY shows the cache, lease, backoff and the full last error", async () => {
    const r = await dmm(["status", "-n", ns, "fail-1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^state\s+failing$/m);
    expect(r.stdout).toMatch(/^backoff\s+1 failed attempt since the last success$/m);
    expect(r.stdout).toMatch(/^next due\s+retry in /m);
    expect(r.stdout).toMatch(/^lease\s+free \(epoch \d+\)$/m);
    expect(r.stdout).toContain('"id": "fail-1"');
    expect(r.stdout).toContain("second line of the error");
  });

  it("dmm status takes the namespace from DMM_NAMESPACE and filters by --kind", async () => {
    const r = await dmm(["status", "--kind", "thing"], { DMM_NAMESPACE: ns });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("ok-2");
    const none = await dmm(["status", "--kind", "other"], { DMM_NAMESPACE: ns });
    expect(none.stdout.trim().split("\n").at(-1)).toBe("0 matters");
  });

  it("dmm status --json prints the matters for scripts", async () => {
    const [list, one] = await Promise.all([dmm(["status", "-n", ns, "--json"]), dmm(["status", "-n", ns, "--json", "ok-1"])]);
    const rows = JSON.parse(list.stdout) as { identity: string; state: string }[];
    expect(rows.map((m) => `${m.identity}:${m.state}`).sort()).toEqual(
      ["fail-1:failing", "ok-1:ok", "ok-2:ok", "park-1:parked", "pending-1:pending"],
    );
    expect(JSON.parse(one.stdout)).toMatchObject({ kind: "thing", identity: "ok-1", state: "ok", cache: { id: "ok-1", runs: 1 } });
  });

  it("dmm status exits 1 for an identity that has no matter", async () => {
    const r = await dmm(["status", "-n", ns, "no-such-thing"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('No matter with identity "no-such-thing"');
  });

  it("dmm status --watch repaints until interrupted, then exits 0", async () => {
    const child = env.track(
      spawn(process.execPath, ["--conditions=dmm-source", "--import", "tsx", "src/cli/main.ts", "status", "-n", ns, "--watch", "--interval-ms", "100"], {
        cwd: ROOT,
        env: { ...process.env, DATABASE_URL: env.url },
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    let out = "";
    child.stdout!.on("data", (d) => (out += String(d)));
    await waitFor("two frames", () => out.split("5 matters").length >= 3, { timeoutMs: 20_000 });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGINT");
    expect(await exited).toBe(0);
  });

  it("dmm touch bumps a matter's generation, keeps its cache, and a running worker runs it", async () => {
    const bucket = await env.open("postgres", { logger: createConsoleLogger("silent") }, ns);
    const stream = bucket.register("thing", Thing);
    const stop = new AbortController();
    const working = stream.work({ signal: stop.signal });
    try {
      const before = (await bucket.matter(Thing, "ok-2"))!;
      const r = await dmm(["touch", "-n", ns, "thing", "ok-2"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`Touched thing "ok-2" in namespace ${ns}: generation ${before.generation + 1}`);
      const after = await waitFor("the touched run", async () => {
        const m = await bucket.matter(Thing, "ok-2");
        return m && m.state === "ok" && m.observedGeneration === before.generation + 1 ? m : undefined;
      });
      expect(after.cache.runs).toBe(before.cache.runs! + 1);
      const status = await dmm(["status", "-n", ns]);
      expect(status.stdout.split("\n")[0]).toMatch(new RegExp(`^namespace ${ns}; 1 worker: ${hostname()} pid ${process.pid} \\(up [\\d.]+m?s\\)$`));
    } finally {
      stop.abort();
      await working;
      await bucket.close();
    }
  });

  it("dmm touch refuses a matter that does not exist (exit 1) unless --create", async () => {
    const missing = await dmm(["touch", "-n", ns, "thing", "typo-1"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("--create");
    const sql = env.sql();
    try {
      expect(await sql`select 1 from dmm.dmm_matter where namespace = ${ns} and identity = 'typo-1'`).toHaveLength(0);
      const created = await dmm(["touch", "-n", ns, "thing", "new-1", "--create"]);
      expect(created.code, created.stderr).toBe(0);
      const [row] = await sql`select cache, generation::int as g from dmm.dmm_matter where namespace = ${ns} and identity = 'new-1'`;
      expect(row).toEqual({ cache: {}, g: 1 });
      const [outbox] = await sql`select count(*)::int as n from dmm.dmm_outbox where namespace = ${ns} and identity = 'new-1'`;
      expect(outbox!.n).toBe(1);
    } finally {
      await sql.close();
    }
  });

  it("dmm touch needs a namespace and exits 2 without one", async () => {
    const r = await dmm(["touch", "thing", "ok-1"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("needs a namespace");
  });

  it("dmm migrate installs dmm's schema in an empty database, then has nothing to do", async () => {
    const url = await createDatabase(false);
    const check = await dmm(["migrate", "--check", "-d", url]);
    expect(check.code).toBe(3);
    const first = await dmm(["migrate", "--database", url]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain(`Applied ${DMM_MIGRATIONS.length} dmm migrations`);
    const [second, again] = await Promise.all([dmm(["migrate"], { DATABASE_URL: url }), dmm(["migrate", "--check", "-d", url])]);
    expect(second.stdout).toContain("already current");
    expect(again.code).toBe(0);
  });

  it("exits 3 when the database has no dmm schema, naming the command that installs it", async () => {
    const url = await createDatabase(false);
    const [status, touch] = await Promise.all([dmm(["status", "-n", "x", "-d", url]), dmm(["touch", "-n", "x", "k", "i", "-d", url])]);
    for (const r of [status, touch]) {
      expect(r.code).toBe(3);
      expect(r.stderr).toContain("dmm migrate");
    }
  });

  it("exits 3 when the database's dmm schema is newer than this version of dmm", async () => {
    const url = await createDatabase(true);
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      await sql`insert into dmm.dmm_migrations (hash, created_at) values ('from-the-future', 4102444800000)`;
    } finally {
      await sql.end();
    }
    const [status, migrate] = await Promise.all([dmm(["status", "-n", "x", "-d", url]), dmm(["migrate", "-d", url])]);
    for (const r of [status, migrate]) {
      expect(r.code).toBe(3);
      expect(r.stderr).toContain("newer than this version");
    }
  });

  it("exits 1 with a sentence when Postgres cannot be reached", async () => {
    const r = await dmm(["status", "-n", "x", "-d", "postgres://postgres@127.0.0.1:1/nowhere"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Could not reach Postgres at postgres://postgres@127.0.0.1:1/nowhere");
  });

  it("dmm sql prints the migrations in journal order without breakpoint markers", async () => {
    const r = await dmm(["sql"]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("statement-breakpoint");
    const order = ["-- 0000_init", 'CREATE TABLE "dmm"."dmm_matter"', "-- 0001_outbox_trigger", "tg_dmm_matter__outbox", 'INSERT INTO "dmm"."dmm_migrations"'];
    const at = order.map((s) => r.stdout.indexOf(s));
    expect(at.every((i) => i >= 0), JSON.stringify(at)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    const latest = await dmm(["sql", "--since", LATEST_MIGRATION]);
    expect(latest.stdout).toContain("Nothing to apply");
    expect(latest.stdout).not.toContain("CREATE");
  });

  it("a database built from dmm sql alone is current for dmm migrate and works for open()", async () => {
    const url = await createDatabase(false);
    const script = (await dmm(["sql"])).stdout;
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      await sql.begin((tx) => tx.unsafe(script));
    } finally {
      await sql.end();
    }
    const [check, migrate] = await Promise.all([dmm(["migrate", "--check", "-d", url]), dmm(["migrate", "-d", url])]);
    expect(check.code, check.stderr).toBe(0);
    expect(migrate.stdout).toContain("already current");
    const bucket = await open(env.namespace("sql"), { database: url, logger: createConsoleLogger("silent") });
    try {
      const stream = bucket.register("thing", Thing);
      await bucket.notify(thing("ok-sql"));
      const stop = new AbortController();
      const working = stream.work({ signal: stop.signal });
      await waitFor("the run on the dmm-sql database", async () => (await bucket.matter(Thing, "ok-sql"))?.state === "ok");
      stop.abort();
      await working;
    } finally {
      await bucket.close();
    }
  });
});
