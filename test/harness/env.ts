/** Connection settings of the test servers, from the environment with the machine's defaults. */
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
/**
 * The test run's id: the pid of the vitest process that ran global setup (workers inherit it
 * through the environment). Database names carry it, so concurrent runs on one server never
 * drop each other's databases, and leftovers of dead runs can be recognised.
 */
export const RUN_ID = process.env.DMM_TEST_RUN ?? String(process.pid);
/** The migrated template every test database of this run is cloned from. */
export const TEMPLATE_DB = `dmm_tpl_${RUN_ID}`;
/** Prefix of this run's per-file test databases. */
export const TEST_DB_PREFIX = `dmm_t_${RUN_ID}_`;
/** Matches any run's test databases and templates, capturing the run's pid. */
export const TEST_DB_PATTERN = /^dmm_(?:t|tpl)_(\d+)(?:_|$)/;

/** The URL of another database on the same server. */
export function urlFor(database: string): string {
  const u = new URL(DATABASE_URL);
  u.pathname = `/${database}`;
  return u.toString();
}
