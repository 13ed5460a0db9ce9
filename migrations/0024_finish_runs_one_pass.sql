-- Custom migration: a finish locks and writes each matter in one pass, by key, in key order.
--
-- Before (0016/0017) finish_runs first locked every matter of the batch (SELECT ... FOR UPDATE, one
-- key look-up each, in key order), then updated them by the ctids it had locked. Each run's finish
-- therefore wrote a row-lock WAL record and dirtied the page twice, and fetched the row twice.
-- Now one UPDATE walks the runs sorted by identity (COLLATE "C", the order every other writer
-- locks in) and looks each matter up by its key: the row lock is the update's own.
--
-- Why this is safe where an UPDATE by ctid was not: when a notify updated the row meanwhile, the
-- UPDATE waits for it and re-checks its conditions on the new version of the row. By ctid that
-- re-check fails (the new version has another ctid) and the finish would be lost; by key it
-- finds the row again and checks the lease as before. A run listed twice in one batch (a stale
-- run and the current one of the same identity) updates the row at most once, as before.
--
-- The plan is pinned: a nested loop over the sorted runs, each looking its matter up by key
-- through a bitmap scan of the primary key. Plain index scans are off in this function, because
-- with them a scan of the whole kind in key order (the matters outer, the runs rescanned for
-- each) is a valid plan too, and the planner picked it on a small analyzed table (the plans
-- test: 999,000 rows compared for 1,000 runs) and may keep it as the cached generic plan for
-- the life of the connection. A bitmap scan needs an index condition, so every plan that reads
-- matters without the identity is a disabled one (priced out, not impossible); bitmap scans and
-- nested loops are switched on here, so that a role or session that turned them off cannot
-- price the intended plan out too (with enable_bitmapscan off, a finish of 200 runs compared
-- four million rows). Namespace and kind come from the sorted runs, not
-- from the parameters, so that even the key prefix is only known inside the loop. The bitmap
-- heap scan re-checks the key on a newer row version and prunes the page like an index scan,
-- so the update stays HOT. Details (cache, base,
-- error, due time) come aligned with the runs, one object each ({} for a run with none, [] when
-- no run has any), and pair with the arrays by position (ROWS FROM) instead of by a join on
-- "ord"; workers before this version send only the runs with details, each with its "ord", and
-- are lined up first.
--
-- One run's finish, batches of 256, one connection (2-core AMD EPYC, 40,000 matters): Postgres
-- CPU 7.2-7.3 -> 6.3-6.7 us with no details, 10.8-12.3 -> 9.7-11.0 us with a cache saved per
-- run; WAL 191 -> 135 bytes (no details), 260 -> 204 bytes (cache saved).
CREATE OR REPLACE FUNCTION "dmm"."finish_runs"(p_namespace text, p_kind text, p_owners text[], p_identities text[], p_epochs bigint[], p_gens bigint[], p_outcomes text[], p_details jsonb)
RETURNS TABLE (ord integer, dirty boolean)
LANGUAGE plpgsql SET enable_seqscan = off SET enable_mergejoin = off SET enable_hashjoin = off SET enable_indexscan = off SET enable_bitmapscan = on SET enable_nestloop = on SET plan_cache_mode = force_generic_plan SET jit = off AS $$
#variable_conflict use_column
DECLARE
  v_ords integer[];
  v_dirty boolean[];
  v_requeue text[];
  v_released boolean[];
  v_details jsonb := p_details;
BEGIN
  -- Details aligned with the runs (one object each, {} for none, or [] when no run has any),
  -- so that they pair with the arrays by position. Workers before 0024 sent only the runs
  -- with details, each with its "ord": line those up first.
  IF jsonb_array_length(v_details) > 0 AND v_details -> 0 ? 'ord' THEN
    -- Keyed by ord, then read back in run order: a look-up per run, no join to plan.
    SELECT jsonb_agg(coalesce(o.by_ord -> (u.n - 1)::text, '{}'::jsonb) ORDER BY u.n) INTO v_details
    FROM (SELECT jsonb_object_agg(e ->> 'ord', e) AS by_ord FROM jsonb_array_elements(p_details) AS e) o
    CROSS JOIN generate_series(1, cardinality(p_identities)) AS u(n);
  END IF;

  WITH done AS (
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
    FROM (
      SELECT p_namespace AS ns, p_kind AS kd, (u.n - 1)::integer AS ord, u.owner, u.identity, u.epoch, u.gen, u.outcome,
        u.base, u.cache, u.error, u.due_ms, u.due_reason
      FROM ROWS FROM (unnest(p_owners), unnest(p_identities), unnest(p_epochs), unnest(p_gens), unnest(p_outcomes),
        jsonb_to_recordset(v_details) AS (base jsonb, cache jsonb, error text, due_ms double precision, due_reason text))
        WITH ORDINALITY AS u(owner, identity, epoch, gen, outcome, base, cache, error, due_ms, due_reason, n)
      ORDER BY u.identity COLLATE "C"
    ) x
    WHERE m.namespace = x.ns AND m.kind = x.kd AND m.identity = x.identity
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
  -- 50 ms (each further notify pushes the row on, see the trigger), at most 1 s after
  -- this finish; a released matter (its worker is stopping) goes back at once.
  IF cardinality(v_requeue) > 0 THEN
    INSERT INTO "dmm"."dmm_outbox" (namespace, kind, identity, available_at)
    SELECT p_namespace, p_kind, r.ident, CASE WHEN r.released THEN now() ELSE now() + interval '50 milliseconds' END
    FROM unnest(v_requeue, v_released) WITH ORDINALITY AS r(ident, released, n) ORDER BY r.n
    ON CONFLICT (namespace, kind, identity) DO UPDATE
      SET bumps = "dmm"."dmm_outbox".bumps + 1, available_at = excluded.available_at, relay_until = NULL, tries = 0;
    PERFORM pg_notify('dmm_outbox', p_namespace || ':' || p_kind);
  END IF;

  RETURN QUERY SELECT u.ord, u.dirty FROM unnest(v_ords, v_dirty) AS u(ord, dirty);
END;
$$;
