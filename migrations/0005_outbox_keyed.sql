-- The outbox is keyed by identity: its primary key is (namespace, kind, identity), which every
-- writer already upserts on, instead of the row id plus a unique index on the key. One index
-- fewer to write for every notify of an identity that is not pending yet. The relay's settle
-- finds its rows by the ctid its take marked (and checks the row id).
ALTER TABLE "dmm"."dmm_outbox" DROP CONSTRAINT "dmm_outbox_pkey";--> statement-breakpoint
DROP INDEX "dmm"."dmm_outbox_key_idx";--> statement-breakpoint
ALTER TABLE "dmm"."dmm_outbox" ADD CONSTRAINT "dmm_outbox_pkey" PRIMARY KEY("namespace","kind","identity");--> statement-breakpoint
-- The relay's take, as in 0003, plus each marked row version's ctid (`tid`), which its
-- settle locks the row by: a lookup by key alone was planned on a table without statistics as
-- a walk of the take index over the whole kind (the two indexes looked equally cheap), and a
-- generic plan keeps that choice. A TID scan has no alternative.
DROP FUNCTION "dmm"."relay_take"(text, integer, integer);
--> statement-breakpoint
CREATE FUNCTION "dmm"."relay_take"(p_namespace text, p_limit integer, p_inflight_ms integer)
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
    (SELECT o.kind AS k FROM "dmm"."dmm_outbox" o WHERE o.namespace = p_namespace ORDER BY o.kind LIMIT 1)
    UNION ALL
    SELECT (SELECT o.kind FROM "dmm"."dmm_outbox" o WHERE o.namespace = p_namespace AND o.kind > k.k ORDER BY o.kind LIMIT 1)
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
      WHERE o.namespace = p_namespace AND o.kind = kk.kind AND o.available_at <= now()
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
       WHERE o.namespace = p_namespace AND o.kind = kk.kind AND (o.relay_until IS NULL OR o.relay_until <= now())
       ORDER BY o.available_at LIMIT 1
     ) f)
  WHERE NOT EXISTS (SELECT 1 FROM marked);
END;
$$;

--> statement-breakpoint
-- The relay's settle after a publish. p_items is a JSON array of {kind, identity, tid, id,
-- bumps, ok, ms}, `tid` being the row version relay_take marked: a dispatched row is deleted
-- unless a notify bumped it meanwhile; a refused or failed row waits `ms` and counts a try.
-- A row a notify bumped since the take is a newer version at another ctid, and is left as the
-- notify left it (available, with its mark cleared), which is what the settle would do to it;
-- a slot that now holds another row (another id) is left alone too. So is a row another
-- transaction holds locked (SKIP LOCKED): only a bump locks an outbox row (a notify, a finish
-- putting its matter back, the sweep), so it is the case above in the making, and the settle
-- never waits. Waiting deadlocked: a finish with ctx.notify children locks its own matter's
-- outbox row before its children's, out of key order. If that bump rolls back, the row comes
-- back when its mark runs out and its token (same msgID) is dropped as a duplicate.
-- Returns how many rows were deleted and kept.
CREATE OR REPLACE FUNCTION "dmm"."relay_settle"(p_namespace text, p_items jsonb)
RETURNS TABLE (gone integer, kept integer)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
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
  FROM (
    SELECT x.tid::tid AS tid, x.id, x.bumps, x.ok, x.ms
    FROM jsonb_to_recordset(p_items) AS x(kind text, identity text, tid text, id bigint, bumps integer, ok boolean, ms double precision)
    ORDER BY x.kind, x.identity
  ) s
  CROSS JOIN LATERAL (
    SELECT o.ctid AS otid, o.id AS oid, o.bumps FROM "dmm"."dmm_outbox" o
    WHERE o.ctid = s.tid AND o.namespace = p_namespace
    FOR UPDATE SKIP LOCKED
  ) l
  WHERE l.oid = s.id;

  DELETE FROM "dmm"."dmm_outbox" o WHERE o.ctid = ANY (v_gone);

  UPDATE "dmm"."dmm_outbox" o SET
    available_at = CASE WHEN k.ok THEN least(o.available_at, now()) ELSE now() + k.ms * interval '1 millisecond' END,
    tries = CASE WHEN k.ok THEN o.tries ELSE o.tries + 1 END,
    relay_until = NULL
  FROM unnest(v_keep, v_ok, v_ms) AS k(t, ok, ms)
  WHERE o.ctid = ANY (v_keep) AND o.ctid = k.t;
  GET DIAGNOSTICS v_kept = ROW_COUNT;

  RETURN QUERY SELECT cardinality(v_gone), v_kept;
END;
$$;
