import { defineConfig } from "vitest/config";

/**
 * Integration tests run against the machine's real Postgres and NATS (DATABASE_URL, NATS_URL).
 * Each file gets its own database cloned from a migrated template (made once in globalSetup)
 * and its own namespaces, so files run in parallel without sharing state.
 */
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/harness/global-setup.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", "json"],
    outputFile: { json: ".tmp/vitest-results.json" },
  },
});
