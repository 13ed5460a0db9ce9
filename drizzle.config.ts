import { defineConfig } from "drizzle-kit";

/**
 * drizzle-kit reads dmm's own tables only (schema `dmm`), and writes migrations that dmm's
 * `migrate()` applies into its private migrations table. `db:check` runs `generate` against
 * this config to prove that no schema change is left without its migration.
 */
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/schema/tables.ts",
  out: process.env.DMM_MIGRATIONS_OUT ?? "./migrations",
  schemaFilter: ["dmm"],
  migrations: { table: "dmm_migrations", schema: "dmm" },
  dbCredentials: { url: process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test" },
});
