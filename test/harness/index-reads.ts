/** Index statistics as the test's own connection sees them, for "reads about N entries" checks. */
import type postgres from "postgres";

/**
 * Index entries read so far per index of schema `dmm` (`idx_tup_read`), including this
 * connection's own pending counts: they are flushed first (Postgres 15 publishes a backend's
 * statistics lazily). Use one connection (`max: 1`) for the statements measured and for this.
 */
export async function indexReads(sql: postgres.Sql): Promise<Record<string, number>> {
  await sql`select pg_stat_force_next_flush()`;
  await sql`select 1`;
  const r = await sql<{ name: string; n: string }[]>`
    select indexrelname as name, idx_tup_read::text as n from pg_stat_user_indexes where schemaname = 'dmm'`;
  return Object.fromEntries(r.map((x) => [x.name, Number(x.n)]));
}
