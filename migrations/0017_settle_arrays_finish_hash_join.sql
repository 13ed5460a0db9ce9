-- Custom migration: relay_settle takes arrays too, and finish_runs joins its batch to the matters
-- by hashing.
--
-- finish_runs (0016): planned with statistics on dmm_matter (after an ANALYZE or autovacuum),
-- its UPDATE estimated one row for the matters' TID scan and ten for the unnested batch, and
-- joined them in a nested loop that compared every run with every matter: 90,000 comparisons
-- for a batch of 300, 150 ms per finish of 800 (the benchmark's scale scenario drained 3.7k/s
-- instead of 14k). The jsonb_to_recordset of 0013 was estimated at 100 rows, which made it a
-- hash join. With nested loops priced out the UPDATE is a hash join whatever the statistics
-- say; the lock step before it is a LATERAL look-up, which has no other plan anyway.
ALTER FUNCTION "dmm"."finish_runs"(text, text, text[], text[], bigint[], bigint[], text[], jsonb) SET enable_nestloop = off;
--> statement-breakpoint
-- relay_settle takes a round's results as arrays (row tid, id, bumps, ok, retry
-- delay), as finish_runs does since 0016, instead of a JSON object of about 100 bytes per row
-- that Postgres parsed into jsonb and took apart again. The rows are no longer sorted by key
-- first: every lock here is taken with SKIP LOCKED, so no order is needed to avoid deadlocks,
-- and that sort compared keys in the database's collation. Otherwise the same as 0013's
-- relay_settle, which stays for relays of the previous version during a rolling upgrade.
CREATE FUNCTION "dmm"."relay_settle"(p_namespace text, p_tids tid[], p_ids bigint[], p_bumps integer[], p_ok boolean[],
  p_ms double precision[])
RETURNS TABLE (gone integer, kept integer)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan SET jit = off AS $$
#variable_conflict use_column
DECLARE
  v_gone tid[];
  v_keep tid[];
  v_ok boolean[];
  v_ms double precision[];
  v_kept integer;
BEGIN
  SELECT coalesce(array_agg(l.otid) FILTER (WHERE s.ok AND l.bumps = s.bumps), '{}'),
         coalesce(array_agg(l.otid) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}'),
         coalesce(array_agg(s.ok) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}'),
         coalesce(array_agg(s.ms) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}')
  INTO v_gone, v_keep, v_ok, v_ms
  FROM unnest(p_tids, p_ids, p_bumps, p_ok, p_ms) AS s(tid, id, bumps, ok, ms)
  CROSS JOIN LATERAL (
    SELECT o.ctid AS otid, o.id AS oid, o.bumps FROM "dmm"."dmm_outbox" o
    WHERE o.ctid = s.tid AND o.namespace = p_namespace
    FOR UPDATE SKIP LOCKED
  ) l
  WHERE l.oid = s.id;

  DELETE FROM "dmm"."dmm_outbox" o WHERE o.ctid = ANY (v_gone);

  UPDATE "dmm"."dmm_outbox" o SET
    available_at = CASE WHEN k.ok THEN o.available_at ELSE greatest(o.available_at, now() + k.ms * interval '1 millisecond') END,
    tries = CASE WHEN k.ok THEN o.tries ELSE o.tries + 1 END,
    relay_until = NULL
  FROM unnest(v_keep, v_ok, v_ms) AS k(t, ok, ms)
  WHERE o.ctid = ANY (v_keep) AND o.ctid = k.t;
  GET DIAGNOSTICS v_kept = ROW_COUNT;

  RETURN QUERY SELECT cardinality(v_gone), v_kept;
END;
$$;
