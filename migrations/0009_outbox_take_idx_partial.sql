-- The take index becomes partial on a predicate that always holds (available_at > '-infinity';
-- the column is NOT NULL and set from now()), so that only queries that state it can use the
-- index: every take, "when is the next row due" and kind skip-scan query below does; a look-up
-- by key cannot, and always takes the primary key.
-- Why: on a table without statistics (autovacuum off or behind, a fresh backlog) the planner
-- prices a look-up by (namespace, kind, identity) the same through either index, both having
-- (namespace, kind) in front, and a generic plan keeps whichever won. Through the take index the
-- look-up filters every row of the kind: in the benchmark's NATS drain, each batch claim's
-- outbox look-up (migration 0007) cost 27 ms per 128 keys, and the Postgres CPU per item tripled.
-- (The relay's settle already avoided it by row version, 0005.) The predicate is not
-- `IS NOT NULL`: newer planners drop that test on a NOT NULL column from a query, which then
-- could not match the index any more.
-- The functions are those of 0003 (take_and_claim) and 0005 (relay_take), with the predicate
-- added to each query that is meant to use the index.
DROP INDEX "dmm"."dmm_outbox_take_idx";--> statement-breakpoint
CREATE INDEX "dmm_outbox_take_idx" ON "dmm"."dmm_outbox" USING btree ("namespace","kind","available_at","id") WHERE "dmm"."dmm_outbox"."available_at" > '-infinity'::timestamptz;
--> statement-breakpoint
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
  SELECT extract(epoch FROM (o.available_at - now())) * 1000 INTO v_next
  FROM "dmm"."dmm_outbox" o
  WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.available_at > '-infinity'::timestamptz
    AND (o.relay_until IS NULL OR o.relay_until <= now())
  ORDER BY o.available_at LIMIT 1;

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
CREATE OR REPLACE FUNCTION "dmm"."relay_take"(p_namespace text, p_limit integer, p_inflight_ms integer)
RETURNS TABLE (id bigint, kind text, identity text, tries integer, bumps integer, born text, tid text, more boolean, next_in_ms double precision)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_kinds text[];
  v_share integer;
  v_tids tid[];
  v_more boolean;
  v_next double precision;
BEGIN
  WITH RECURSIVE k AS (
    (SELECT o.kind AS k FROM "dmm"."dmm_outbox" o WHERE o.namespace = p_namespace AND o.available_at > '-infinity'::timestamptz ORDER BY o.kind LIMIT 1)
    UNION ALL
    SELECT (SELECT o.kind FROM "dmm"."dmm_outbox" o WHERE o.namespace = p_namespace AND o.kind > k.k AND o.available_at > '-infinity'::timestamptz ORDER BY o.kind LIMIT 1)
    FROM k WHERE k.k IS NOT NULL
  )
  SELECT array_agg(k.k) INTO v_kinds FROM k WHERE k.k IS NOT NULL;
  IF v_kinds IS NULL THEN
    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::text, NULL::text, false, NULL::double precision;
    RETURN;
  END IF;
  v_share := greatest(1, ceil(p_limit::numeric / cardinality(v_kinds)))::integer;

  SELECT coalesce(array_agg(t.otid), '{}'), coalesce(bool_or(t.n = v_share), false)
  INTO v_tids, v_more
  FROM (
    SELECT r.otid, count(*) OVER (PARTITION BY kk.kind) AS n
    FROM unnest(v_kinds) AS kk(kind)
    CROSS JOIN LATERAL (
      SELECT o.ctid AS otid FROM "dmm"."dmm_outbox" o
      WHERE o.namespace = p_namespace AND o.kind = kk.kind AND o.available_at > '-infinity'::timestamptz AND o.available_at <= now()
        AND (o.relay_until IS NULL OR o.relay_until <= now())
      ORDER BY o.available_at, o.id
      LIMIT v_share
      FOR UPDATE SKIP LOCKED
    ) r
  ) t;

  RETURN QUERY
  WITH marked AS (
    UPDATE "dmm"."dmm_outbox" o SET relay_until = now() + p_inflight_ms * interval '1 millisecond'
    WHERE o.ctid = ANY (v_tids)
    RETURNING o.id, o.kind, o.identity, o.tries, o.bumps, (extract(epoch FROM o.created_at) * 1000000)::bigint::text AS born, o.ctid::text AS tid
  )
  SELECT m.id, m.kind, m.identity, m.tries, m.bumps, m.born, m.tid, v_more, NULL::double precision FROM marked m
  UNION ALL
  -- When none was taken: when the next row becomes available (rows in flight come back at
  -- their relay_until, within the relay's poll interval).
  SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, false,
    (SELECT min(extract(epoch FROM (f.available_at - now())) * 1000)
     FROM unnest(v_kinds) AS kk(kind)
     CROSS JOIN LATERAL (
       SELECT o.available_at FROM "dmm"."dmm_outbox" o
       WHERE o.namespace = p_namespace AND o.kind = kk.kind AND o.available_at > '-infinity'::timestamptz
         AND (o.relay_until IS NULL OR o.relay_until <= now())
       ORDER BY o.available_at LIMIT 1
     ) f)
  WHERE NOT EXISTS (SELECT 1 FROM marked);
END;
$$;
