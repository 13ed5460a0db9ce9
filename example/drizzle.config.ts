import { defineConfig } from "drizzle-kit";

/**
 * The example app's drizzle-kit config: its own schema file, its own migrations folder and its
 * own migrations table. Run from the repository root:
 *   npx drizzle-kit generate --config example/drizzle.config.ts
 * dmm's tables live in the Postgres schema "dmm" and are installed by dmm's migrate(), so this
 * config reads only example/schema.ts and filters to "public".
 */
export default defineConfig({
  dialect: "postgresql",
  schema: "./example/schema.ts",
  out: "./example/migrations",
  schemaFilter: ["public"],
  migrations: { table: "example_migrations", schema: "drizzle" },
  dbCredentials: { url: process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test" },
});
