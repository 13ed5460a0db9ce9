-- Custom migration: finish_runs takes its batch as arrays, one per field, and a JSON list of the
-- few runs that carry more (a cache to save, an error, a due time).
--
-- The finish of a trivial successful run was a JSON object of about 190 bytes (ord, owner,
-- identity, epoch, generation, outcome and four nulls) that the worker stringified and Postgres
-- parsed into jsonb and then picked apart twice with jsonb_to_recordset. On a Postgres-only drain
-- of 20k runs that parse was 6% of Postgres CPU (perf: jsonb_in), and building the text 5% of the
-- worker's busy time (node --cpu-prof). Now owners, identities, epochs, generations and
-- outcomes are arrays, and only runs with a saved cache, an error or a due time appear in p_details.
--
-- Same locks in the same order, same fencing, same coalescing requeue as 0013's finish_runs, which
-- stays for workers of the previous version during a rolling upgrade.
CREATE FUNCTION "dmm"."finish_runs"(p_namespace text, p_kind text, p_owners text[], p_identities text[], p_epochs bigint[],
  p_gens bigint[], p_outcomes text[], p_details jsonb)
RETURNS TABLE (ord integer, dirty boolean)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan SET jit = off AS $$
#variable_conflict use_column
DECLARE
  v_tids tid[];
  v_ords integer[];
  v_dirty boolean[];
  v_requeue text[];
  v_released boolean[];
BEGIN
  -- Lock in key order, one key lookup each.
  SELECT coalesce(array_agg(l.mtid), '{}') INTO v_tids
  FROM (SELECT DISTINCT u.ident COLLATE "C" AS ident FROM unnest(p_identities) AS u(ident) ORDER BY 1) k
  CROSS JOIN LATERAL (
    SELECT m.ctid AS mtid FROM "dmm"."dmm_matter" m
    WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = k.ident
    LIMIT 1 FOR UPDATE
  ) l;

  WITH x AS (
    SELECT (u.n - 1)::integer AS ord, u.owner, u.identity, u.epoch, u.gen, u.outcome,
      d.base, d.cache, d.error, d.due_ms, d.due_reason
    FROM unnest(p_owners, p_identities, p_epochs, p_gens, p_outcomes) WITH ORDINALITY AS u(owner, identity, epoch, gen, outcome, n)
    LEFT JOIN jsonb_to_recordset(p_details) AS d(
      ord integer, base jsonb, cache jsonb, error text, due_ms double precision, due_reason text) ON d.ord = u.n - 1
  ), done AS (
    UPDATE "dmm"."dmm_matter" m SET
      cache = CASE WHEN x.outcome <> 'ok' OR x.cache IS NULL THEN m.cache
                   WHEN m.cache = x.base THEN x.cache
                   ELSE "dmm"."merge_cache"(x.base, x.cache, m.cache) END,
      observed_generation = CASE WHEN x.outcome IN ('ok', 'park') THEN x.gen ELSE m.observed_generation END,
      attempts = CASE x.outcome WHEN 'ok' THEN 0 WHEN 'release' THEN m.attempts ELSE m.attempts + 1 END,
      last_error = CASE x.outcome WHEN 'ok' THEN NULL WHEN 'release' THEN m.last_error ELSE x.error END,
      parked = CASE x.outcome WHEN 'release' THEN m.parked ELSE (x.outcome = 'park' AND m.generation = x.gen) END,
      due_at = CASE WHEN x.outcome = 'release' THEN m.due_at
                    WHEN x.due_ms IS NULL OR (x.outcome <> 'fail' AND m.generation > x.gen) THEN NULL
                    ELSE now() + x.due_ms * interval '1 millisecond' END,
      due_reason = CASE WHEN x.outcome = 'release' THEN m.due_reason
                        WHEN x.outcome <> 'fail' AND m.generation > x.gen THEN NULL ELSE x.due_reason END,
      lease_owner = NULL, lease_until = NULL, updated_at = now()
    FROM x
    WHERE m.ctid = ANY (v_tids) AND m.identity = x.identity
      AND m.lease_owner = x.owner AND m.lease_epoch = x.epoch AND m.lease_until > now()
    RETURNING x.ord, m.identity,
      (x.outcome = 'release' OR (m.generation > x.gen AND (x.outcome <> 'fail' OR x.due_ms IS NULL))) AS dirty,
      x.outcome = 'release' AS released
  )
  SELECT coalesce(array_agg(d.ord), '{}'), coalesce(array_agg(d.dirty), '{}'),
         coalesce(array_agg(d.identity ORDER BY d.identity) FILTER (WHERE d.dirty), '{}'),
         coalesce(array_agg(d.released ORDER BY d.identity) FILTER (WHERE d.dirty), '{}')
  INTO v_ords, v_dirty, v_requeue, v_released
  FROM done d;

  -- Coalescing: a matter notified during its run runs again once the notifies pause for
  -- 50 ms (each further notify pushes the row on, see the trigger below), at most 1 s after
  -- this finish; a released matter (its worker is stopping) goes back at once.
  IF cardinality(v_requeue) > 0 THEN
    INSERT INTO "dmm"."dmm_outbox" (namespace, kind, identity, available_at)
    SELECT p_namespace, p_kind, r.ident, CASE WHEN r.released THEN now() ELSE now() + interval '50 milliseconds' END
    FROM unnest(v_requeue, v_released) WITH ORDINALITY AS r(ident, released, n) ORDER BY r.n
    ON CONFLICT (namespace, kind, identity) DO UPDATE
      -- A row a notify made during the run stands for the same change: it waits too.
      SET bumps = "dmm"."dmm_outbox".bumps + 1, available_at = excluded.available_at, relay_until = NULL, tries = 0;
    PERFORM pg_notify('dmm_outbox', p_namespace || ':' || p_kind);
  END IF;

  RETURN QUERY SELECT u.ord, u.dirty FROM unnest(v_ords, v_dirty) AS u(ord, dirty);
END;
$$;
