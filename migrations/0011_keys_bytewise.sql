-- Keys compare byte by byte: namespace, kind and identity of both hot tables get COLLATE "C".
--
-- Why: every primary-key descent, unique check and key sort compared these columns in the
-- database's default collation, which goes through the C library's strcoll (a locale look-up,
-- a copy of both strings to terminate them, then the compare) even for C.UTF-8; perf of a
-- Postgres-only drain showed text comparison (varstr_cmp, strcoll, pg_newlocale_from_collation,
-- bttextcmp) in about a tenth of the Postgres CPU. With "C" a comparison is a memcmp.
-- Keys are only matched and ordered for lock order, never shown in a language's order, so
-- nothing else changes; on a C.UTF-8 database the order is even the same (code point order).
-- One ALTER per table, so that each index is rebuilt once; the tables are not rewritten
-- (a collation change of text is binary compatible), but the statement holds an exclusive lock
-- on the table while its indexes are rebuilt: seconds per million matters.
--
-- Lock order: statements that lock rows in key order and sort keys that come from parameters
-- (not from these columns) sort them COLLATE "C" too (src/store/notify.ts, workers.ts and
-- finish_runs below), so that every blocking lock is still taken in one order.
--
-- take_and_claim (0009) no longer looks for "the next available row" after a full batch (the
-- worker takes again at once then and never reads it), and otherwise looks only at rows that
-- become available later: the rows available now were just taken (this transaction's own
-- deletes, still in the index, were each fetched and skipped again) or are locked by another
-- take. In a 50k-item drain that halved the take index entries read (184k -> 85k per 20k).
ALTER TABLE "dmm"."dmm_matter" ALTER COLUMN "namespace" SET DATA TYPE text COLLATE "C", ALTER COLUMN "kind" SET DATA TYPE text COLLATE "C", ALTER COLUMN "identity" SET DATA TYPE text COLLATE "C";--> statement-breakpoint
ALTER TABLE "dmm"."dmm_outbox" ALTER COLUMN "namespace" SET DATA TYPE text COLLATE "C", ALTER COLUMN "kind" SET DATA TYPE text COLLATE "C", ALTER COLUMN "identity" SET DATA TYPE text COLLATE "C";--> statement-breakpoint
CREATE OR REPLACE FUNCTION "dmm"."take_and_claim"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_limit integer)
RETURNS TABLE (identity text, cache jsonb, generation bigint, attempts integer, epoch bigint, reason text, taken integer, next_in_ms double precision)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_taken integer;
  v_gone tid[];
  v_defer tid[];
  v_defer_at timestamptz[];
  v_tids tid[];
  v_ids text[];
  v_reasons text[];
  v_next double precision;
BEGIN
  WITH taken AS (
    SELECT o.ctid AS otid, o.identity AS ident FROM "dmm"."dmm_outbox" o
    WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.available_at > '-infinity'::timestamptz AND o.available_at <= now()
      AND (o.relay_until IS NULL OR o.relay_until <= now())
    ORDER BY o.available_at, o.id
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  ), looked AS (
    SELECT t.otid, t.ident, l.mtid, l.prev_owner, l.due_at, l.due_reason,
      -- Not locked but there: another transaction (a notify committing) holds it.
      (l.mtid IS NULL AND EXISTS (
        SELECT 1 FROM "dmm"."dmm_matter" m
        WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = t.ident)) AS busy,
      -- Locked, free, and a retry or requeue due within the horizon: keep the row until then.
      coalesce(l.prev_owner IS NULL AND l.due_at > now() AND l.due_at < now() + interval '5 seconds', false) AS early
    FROM taken t
    LEFT JOIN LATERAL (
      SELECT m.ctid AS mtid, m.lease_owner AS prev_owner, m.due_at, m.due_reason
      FROM "dmm"."dmm_matter" m
      WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = t.ident
      LIMIT 1 FOR UPDATE SKIP LOCKED
    ) l ON true
  )
  SELECT count(*)::integer,
    coalesce(array_agg(otid) FILTER (WHERE NOT busy AND NOT early), '{}'),
    coalesce(array_agg(otid) FILTER (WHERE busy OR early), '{}'),
    coalesce(array_agg(CASE WHEN early THEN due_at ELSE now() + interval '20 milliseconds' END) FILTER (WHERE busy OR early), '{}'),
    coalesce(array_agg(mtid) FILTER (WHERE mtid IS NOT NULL AND NOT early), '{}'),
    coalesce(array_agg(ident) FILTER (WHERE mtid IS NOT NULL AND NOT early), '{}'),
    coalesce(array_agg(CASE WHEN prev_owner IS NOT NULL THEN 'recovery'
                            WHEN due_at IS NOT NULL THEN coalesce(due_reason, 'retry')
                            ELSE 'notify' END) FILTER (WHERE mtid IS NOT NULL AND NOT early), '{}')
  INTO v_taken, v_gone, v_defer, v_defer_at, v_tids, v_ids, v_reasons
  FROM looked;

  IF v_taken = 0 THEN
    SELECT extract(epoch FROM (o.available_at - now())) * 1000 INTO v_next
    FROM "dmm"."dmm_outbox" o
    WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.available_at > '-infinity'::timestamptz
      AND (o.relay_until IS NULL OR o.relay_until <= now())
    ORDER BY o.available_at LIMIT 1;
    RETURN QUERY SELECT NULL::text, NULL::jsonb, NULL::bigint, NULL::integer, NULL::bigint, NULL::text, 0, v_next;
    RETURN;
  END IF;
  -- Taken rows are gone whether or not their matter needs a run: a clean or parked matter needs
  -- none, and a matter leased by a live run is re-enqueued by that run's finish if it changed.
  DELETE FROM "dmm"."dmm_outbox" o WHERE o.ctid = ANY (v_gone);
  IF cardinality(v_defer) > 0 THEN
    UPDATE "dmm"."dmm_outbox" o SET available_at = d.at, tries = o.tries + 1
    FROM unnest(v_defer, v_defer_at) AS d(t, at)
    WHERE o.ctid = ANY (v_defer) AND o.ctid = d.t;
  END IF;

  -- When the next row of this kind becomes available (null: none left), so that an idle
  -- worker waits exactly that long without asking.
  -- ORDER BY … LIMIT 1, not min(): with the filter, min() would read every row of the kind.
  -- A NULL (none left) stays NULL.
  IF v_taken < p_limit THEN
    SELECT extract(epoch FROM (o.available_at - now())) * 1000 INTO v_next
    FROM "dmm"."dmm_outbox" o
    WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.available_at > now()
      AND (o.relay_until IS NULL OR o.relay_until <= now())
    ORDER BY o.available_at LIMIT 1;
  END IF;

  RETURN QUERY
  WITH claimed AS (
    SELECT * FROM "dmm"."stamp_leases"(v_tids, p_owner, p_lease_ms)
  )
  SELECT c.identity, c.cache, c.generation, c.attempts, c.lease_epoch, r.reason, v_taken, v_next
  FROM claimed c JOIN unnest(v_ids, v_reasons) AS r(ident, reason) ON r.ident = c.identity
  UNION ALL
  SELECT NULL, NULL, NULL, NULL, NULL, NULL, v_taken, v_next WHERE NOT EXISTS (SELECT 1 FROM claimed);
END;
$$;
--> statement-breakpoint
-- finish_runs of 0003, its lock step ordering the keys COLLATE "C".
CREATE OR REPLACE FUNCTION "dmm"."finish_runs"(p_namespace text, p_kind text, p_items jsonb)
RETURNS TABLE (ord integer, dirty boolean)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
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
  FROM (SELECT DISTINCT x.identity COLLATE "C" AS ident FROM jsonb_to_recordset(p_items) AS x(identity text) ORDER BY 1) k
  CROSS JOIN LATERAL (
    SELECT m.ctid AS mtid FROM "dmm"."dmm_matter" m
    WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = k.ident
    LIMIT 1 FOR UPDATE
  ) l;

  WITH x AS (
    SELECT * FROM jsonb_to_recordset(p_items) AS x(
      ord integer, owner text, identity text, epoch bigint, gen bigint, outcome text,
      base jsonb, cache jsonb, error text, due_ms double precision, due_reason text)
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
      SET bumps = "dmm"."dmm_outbox".bumps + 1, available_at = excluded.available_at, relay_until = NULL;
    PERFORM pg_notify('dmm_outbox', p_namespace || ':' || p_kind);
  END IF;

  RETURN QUERY SELECT u.ord, u.dirty FROM unnest(v_ords, v_dirty) AS u(ord, dirty);
END;
$$;
