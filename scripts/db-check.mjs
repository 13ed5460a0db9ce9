#!/usr/bin/env node
// Fails when `drizzle-kit generate` would write a migration that is not committed: a schema
// change in src/schema without its migration. Generates into a scratch copy of migrations/.
import { cpSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { mkdirSync } from "node:fs";
import { relative } from "node:path";
import { spawnSync } from "node:child_process";

// drizzle-kit only takes an output folder relative to the project.
mkdirSync(".tmp", { recursive: true });
const scratch = relative(process.cwd(), mkdtempSync(".tmp/db-check-"));
try {
  cpSync("migrations", scratch, { recursive: true });
  const before = new Set(readdirSync(scratch));
  const run = spawnSync("npx", ["drizzle-kit", "generate", "--name", "db_check"], {
    env: { ...process.env, DMM_MIGRATIONS_OUT: scratch },
    encoding: "utf8",
  });
  if (run.status !== 0 || /error/i.test(run.stderr) || !/nothing to migrate|migration file/i.test(run.stdout + run.stderr)) {
    process.stderr.write(run.stdout + run.stderr);
    console.error("db:check: drizzle-kit generate failed.");
    process.exit(1);
  }
  const added = readdirSync(scratch).filter((f) => !before.has(f));
  if (added.length > 0) {
    console.error(`db:check: src/schema has changes without a migration (drizzle-kit would write ${added.join(", ")}). Run "npm run db:generate" and commit the result.`);
    process.exit(1);
  }
  console.log("db:check: migrations match src/schema.");
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
