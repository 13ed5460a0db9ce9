/** Connection settings of the test servers, from the environment with the machine's defaults. */
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
/** The migrated template every test database is cloned from. */
export const TEMPLATE_DB = "dmm_template";
/** Prefix of per-file test databases; global setup drops leftovers of earlier runs. */
export const TEST_DB_PREFIX = "dmm_t_";

/** The URL of another database on the same server. */
export function urlFor(database: string): string {
  const u = new URL(DATABASE_URL);
  u.pathname = `/${database}`;
  return u.toString();
}
