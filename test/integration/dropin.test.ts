/**
 * dmm dropped into an existing Drizzle app (test/fixtures/dropin-app): the app keeps its own
 * tables, drizzle-kit config and migrations; dmm's tables live in the Postgres schema "dmm",
 * installed by migrate() (or by the app's own migrator from `dmm sql`), and the app's
 * `drizzle-kit generate` and `push` never touch them. Everything runs as subprocesses, the way
 * the app and its tooling run.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { TEMPLATE_DB, TEST_DB_PREFIX, urlFor } from "../harness/env.js";
import { useTestEnvironment } from "../harness/setup.js";
import { expectedMigrations } from "../../src/store/migrate.js";

/** The dmm migrations this version ships, and the last one. */
const DMM_MIGRATIONS = expectedMigrations();
const LATEST_MIGRATION = DMM_MIGRATIONS[DMM_MIGRATIONS.length - 1]!.tag;

const env = useTestEnvironment();
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const FIXTURE = join(ROOT, "test/fixtures/dropin-app");
const DRIZZLE_KIT = join(ROOT, "node_modules/drizzle-kit/bin.cjs");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], cwd: string, databaseUrl: string): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: databaseUrl };
  delete childEnv.NATS_URL;
  const child = env.track(spawn(process.execPath, args, { cwd, env: childEnv, stdio: ["ignore", "pipe", "pipe"] }));
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += String(d)));
  child.stderr!.on("data", (d) => (stderr += String(d)));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** The fixture app (`app.ts <command>`), run from `dir` against `url`. */
async function app(dir: string, url: string, ...args: string[]): Promise<string> {
  const r = await run(["--conditions=dmm-source", "--import", "tsx", "app.ts", ...args], dir, url);
  expect(r.code, `app ${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** drizzle-kit with the app's config, run from `dir` (the app's root) against `url`. */
async function drizzleKit(dir: string, url: string, ...args: string[]): Promise<string> {
  const r = await run([DRIZZLE_KIT, ...args, "--config", "drizzle.config.ts"], dir, url);
  expect(r.code, `drizzle-kit ${args.join(" ")}: ${r.stdout}${r.stderr}`).toBe(0);
  return r.stdout + r.stderr;
}

/** Copies of the fixture under .tmp/ (inside the package, so "dmm" still resolves to it). */
const copies: string[] = [];
function copyFixture(): string {
  const dir = join(ROOT, ".tmp", `dropin-${randomBytes(4).toString("hex")}`);
  cpSync(FIXTURE, dir, { recursive: true });
  copies.push(dir);
  return dir;
}

const databases: string[] = [];
async function createDatabase(fromTemplate: boolean): Promise<string> {
  const name = `${TEST_DB_PREFIX}dropin_${randomBytes(4).toString("hex")}`;
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"${fromTemplate ? ` template "${TEMPLATE_DB}"` : ""}`);
  } finally {
    await admin.end();
  }
  databases.push(name);
  return urlFor(name);
}

afterAll(async () => {
  for (const dir of copies) rmSync(dir, { recursive: true, force: true });
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    for (const name of databases) await admin.unsafe(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
});

/** Everything dmm owns in a database: relations, columns, indexes, constraints, triggers, functions, rows. */
async function dmmFingerprint(url: string): Promise<string[]> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql<{ item: string }[]>`
      select 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '') as item
        from pg_class c where c.relnamespace = 'dmm'::regnamespace
      union all
      select 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
        from information_schema.columns where table_schema = 'dmm'
      union all
      select 'index ' || indexdef from pg_indexes where schemaname = 'dmm'
      union all
      select 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) from pg_constraint where connamespace = 'dmm'::regnamespace
      union all
      select 'trigger ' || pg_get_triggerdef(t.oid) from pg_trigger t
        join pg_class c on c.oid = t.tgrelid where c.relnamespace = 'dmm'::regnamespace and not t.tgisinternal
      union all
      select 'function ' || p.proname || ' ' || md5(pg_get_functiondef(p.oid)) from pg_proc p where p.pronamespace = 'dmm'::regnamespace
      union all
      select 'rows dmm_matter ' || count(*) from dmm.dmm_matter
      union all
      select 'rows dmm_migrations ' || count(*) from dmm.dmm_migrations
      order by 1`;
    return rows.map((r) => r.item);
  } finally {
    await sql.end();
  }
}

async function query<T extends Record<string, unknown>>(url: string, text: string): Promise<T[]> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return (await sql.unsafe(text)) as unknown as T[];
  } finally {
    await sql.end();
  }
}

describe("drop-in for an existing Drizzle app", () => {
  let dir: string;

  beforeAll(async () => {
    dir = copyFixture();
    await app(dir, env.url, "migrate");
  });

  it("installs the app's migrations and dmm's side by side, each in its own migrations table", async () => {
    const [counts] = await query<{ app: number; dmm: number }>(
      env.url,
      `select (select count(*)::int from drizzle.__drizzle_migrations) as app, (select count(*)::int from dmm.dmm_migrations) as dmm`,
    );
    expect(counts).toEqual({ app: 1, dmm: DMM_MIGRATIONS.length });
    await app(dir, env.url, "migrate"); // again: nothing to do, no error
    expect((await query(env.url, `select count(*)::int as n from drizzle.__drizzle_migrations`))[0]).toEqual({ n: 1 });
  });

  it("notify(m, { tx }) commits with the app's transaction and vanishes with its rollback", async () => {
    await app(dir, env.url, "order", "o-commit");
    await app(dir, env.url, "order", "o-rollback", "--rollback");
    const rows = await query<{ id: string; order: boolean; matter: boolean; outbox: boolean }>(
      env.url,
      `select x.id,
              exists (select 1 from orders o where o.id = x.id) as order,
              exists (select 1 from dmm.dmm_matter m where m.namespace = 'shop' and m.identity = x.id) as matter,
              exists (select 1 from dmm.dmm_outbox b where b.namespace = 'shop' and b.identity = x.id) as outbox
       from (values ('o-commit'), ('o-rollback')) as x(id) order by x.id`,
    );
    expect(rows).toEqual([
      { id: "o-commit", order: true, matter: true, outbox: true },
      { id: "o-rollback", order: false, matter: false, outbox: false },
    ]);
  });

  it("a worker ships the order, and a typed join with dmm/schema's tables reports it", async () => {
    await app(dir, env.url, "order", "o-ship");
    await app(dir, env.url, "work", "o-ship");
    const report = JSON.parse(await app(dir, env.url, "report")) as Record<string, unknown>[];
    expect(report.find((r) => r.orderId === "o-ship")).toEqual({
      orderId: "o-ship",
      status: "shipped",
      customer: "Customer of o-ship",
      generation: 1,
      observedGeneration: 1,
      attempts: 0,
      upToDate: true,
    });
  });

  it("the app's drizzle-kit generate finds no changes: dmm's tables are not in its schema", async () => {
    const before = readdirSync(join(dir, "migrations"));
    const out = await drizzleKit(dir, env.url, "generate");
    expect(out).toContain("No schema changes");
    expect(out).not.toContain("dmm_");
    expect(readdirSync(join(dir, "migrations"))).toEqual(before);
  });

  it("re-exporting dmm's tables from the app's schema file would put them into the app's migrations (why not to)", async () => {
    const bad = copyFixture();
    // The mistake the README warns about (a relative path here: drizzle-kit loads schema files
    // as CommonJS, which the package's "dmm/schema" export does not serve).
    writeFileSync(join(bad, "schema.ts"), `${readFileSync(join(bad, "schema.ts"), "utf8")}\nexport * from "../../src/schema/index.js";\n`);
    await drizzleKit(bad, env.url, "generate", "--name", "oops");
    const oops = readdirSync(join(bad, "migrations")).find((f) => f.endsWith("_oops.sql"))!;
    expect(readFileSync(join(bad, "migrations", oops), "utf8")).toContain('CREATE TABLE "dmm"."dmm_matter"');
  });

  it("the app's drizzle-kit push creates its tables and leaves dmm's schema, trigger and rows untouched", async () => {
    const url = await createDatabase(true);
    // dmm is installed and in use before the app pushes its schema.
    await query(url, `insert into dmm.dmm_matter (namespace, kind, identity) values ('shop', 'shipment', 'before-push')`);
    const before = await dmmFingerprint(url);
    expect(before).toContain("rows dmm_matter 1");
    expect(before.some((i) => i.includes("10_dmm_matter__outbox_update"))).toBe(true);

    const out = await drizzleKit(dir, url, "push", "--force", "--verbose");
    const statements = out.slice(out.indexOf("Pulling schema"));
    expect(statements).toContain('CREATE TABLE "customers"');
    expect(statements).not.toMatch(/drop|dmm/i);
    const tables = await query<{ t: string }>(url, `select table_schema || '.' || table_name as t from information_schema.tables where table_schema in ('public', 'dmm') order by 1`);
    expect(tables.map((r) => r.t)).toEqual(["dmm.dmm_matter", "dmm.dmm_migrations", "dmm.dmm_outbox", "dmm.dmm_worker", "public.customers", "public.orders"]);
    expect(await dmmFingerprint(url)).toEqual(before);

    // A second push has nothing to do, and dmm's trigger still enqueues.
    await drizzleKit(dir, url, "push", "--force");
    expect(await dmmFingerprint(url)).toEqual(before);
    await query(url, `update dmm.dmm_matter set generation = generation + 1 where identity = 'before-push'`);
    expect(await query(url, `select identity from dmm.dmm_outbox`)).toEqual([{ identity: "before-push" }]);
  });

  it("single history: dmm sql in a custom migration installs dmm through the app's own migrator", async () => {
    const single = copyFixture();
    const url = await createDatabase(false);
    // The app adds a journaled custom migration and fills it with `dmm sql`.
    await drizzleKit(single, url, "generate", "--custom", "--name", "dmm_schema");
    const custom = readdirSync(join(single, "migrations")).find((f) => f.endsWith("_dmm_schema.sql"))!;
    const printed = await run(["--conditions=dmm-source", "--import", "tsx", join(ROOT, "src/cli/main.ts"), "sql"], single, url);
    expect(printed.code, printed.stderr).toBe(0);
    writeFileSync(join(single, "migrations", custom), printed.stdout);

    await app(single, url, "migrate", "--app-only");
    const [counts] = await query<{ app: number; dmm: number }>(
      url,
      `select (select count(*)::int from drizzle.__drizzle_migrations) as app, (select count(*)::int from dmm.dmm_migrations) as dmm`,
    );
    expect(counts).toEqual({ app: 2, dmm: DMM_MIGRATIONS.length });
    // open() accepts the database: dmm's bookkeeping rows came with the SQL.
    await app(single, url, "order", "s-1");
    await app(single, url, "work", "s-1");
    // The custom migration does not confuse the app's drizzle-kit.
    expect(await drizzleKit(single, url, "generate")).toContain("No schema changes");
    const before = await dmmFingerprint(url);
    await drizzleKit(single, url, "push", "--force");
    expect(await dmmFingerprint(url)).toEqual(before);
  });
});
