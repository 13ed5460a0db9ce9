/**
 * Migrations: applied by many processes at once, and checked on open with a message that says
 * what to run.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { open } from "../../src/bucket.js";
import { SchemaVersionError } from "../../src/errors.js";
import { expectedMigrations } from "../../src/store/migrate.js";
import { withScratchDatabase } from "../harness/scratch-db.js";
import { useTestEnvironment } from "../harness/setup.js";

const env = useTestEnvironment();
const SHIPPED = expectedMigrations();
const LATEST = SHIPPED[SHIPPED.length - 1]!.tag;
const MIGRATE = fileURLToPath(new URL("../harness/migrate-process.ts", import.meta.url));

function withEmptyDatabase(fn: (url: string) => Promise<void>): Promise<void> {
  return withScratchDatabase("empty", "", fn);
}

function runMigrate(url: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = env.track(spawn(process.execPath, ["--import", "tsx", MIGRATE, url], { stdio: ["ignore", "pipe", "pipe"] }));
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => resolve({ code, out }));
  });
}

describe("migrations", () => {
  it("succeed in all of four processes migrating one database at once, applying each migration once", async () => {
    await withEmptyDatabase(async (url) => {
      const results = await Promise.all([1, 2, 3, 4].map(() => runMigrate(url)));
      expect(results.map((r) => r.code), results.map((r) => r.out).join("\n")).toEqual([0, 0, 0, 0]);
      const applied = results.map((r) => JSON.parse(r.out.trim()).applied as number);
      expect(applied.reduce((a, b) => a + b, 0)).toBe(SHIPPED.length);
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      const [row] = await sql`select count(*)::int as n from dmm.dmm_migrations`;
      expect(row!.n).toBe(SHIPPED.length);
      await sql.end();
    });
  });

  it("refuses to open a database without dmm's schema and names the command to run", async () => {
    await withEmptyDatabase(async (url) => {
      const err = await open("app", { database: url }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SchemaVersionError);
      expect((err as Error).message).toContain("npx dmm migrate");
    });
  });

  it("applies the migrations on open with { migrate: true }", async () => {
    await withEmptyDatabase(async (url) => {
      const bucket = await open("app", { database: url, migrate: true });
      await bucket.close();
    });
  });

  it("refuses a database whose dmm schema is older, naming the missing migration and the command", async () => {
    const sql = env.sql();
    await sql`delete from dmm.dmm_migrations where created_at = (select max(created_at) from dmm.dmm_migrations)`;
    const err = await open("app", { database: env.url }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SchemaVersionError);
    expect((err as Error).message).toMatch(new RegExp(`older than this version.*${LATEST}.*npx dmm migrate`, "s"));
    await sql`insert into dmm.dmm_migrations (hash, created_at) values ('restored', (select max(created_at) + 1 from dmm.dmm_migrations))`;
    await sql.close();
  });

  it("refuses a database migrated by a newer dmm, naming both versions", async () => {
    await withEmptyDatabase(async (url) => {
      const setup = await open("app", { database: url, migrate: true });
      await setup.close();
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      await sql`insert into dmm.dmm_migrations (hash, created_at) values ('future', 9999999999999)`;
      await sql.end();
      const err = await open("app", { database: url }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SchemaVersionError);
      expect((err as Error).message).toMatch(new RegExp(`newer than this version.*${LATEST}.*Upgrade dmm`, "s"));
    });
  });
});
