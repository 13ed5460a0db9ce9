-- The outbox is keyed by identity: its primary key is (namespace, kind, identity), which every
-- writer already upserts on, instead of the row id plus a unique index on the key. One index
-- fewer to write for every notify of an identity that is not pending yet. The relay's settle
-- finds its rows by key (and checks the row id).
ALTER TABLE "dmm"."dmm_outbox" DROP CONSTRAINT "dmm_outbox_pkey";--> statement-breakpoint
DROP INDEX "dmm"."dmm_outbox_key_idx";--> statement-breakpoint
ALTER TABLE "dmm"."dmm_outbox" ADD CONSTRAINT "dmm_outbox_pkey" PRIMARY KEY("namespace","kind","identity");--> statement-breakpoint
-- The relay's settle after a publish. p_items is a JSON array of {kind, identity, id, bumps, ok,
-- ms}: a dispatched row is deleted unless a notify bumped it meanwhile (that one is made
-- available again, for another token); a refused or failed row waits `ms` and counts a try.
-- Rows are locked in key order (the order of the outbox trigger's upserts). Returns how many
-- rows were deleted and kept.
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
  -- Lock by key (the key alone picks the row: with the id in the lookup too, a generic plan on
  -- a table with statistics walked the take index over the whole kind), then decide per row
  -- from the locked version, and write by ctid only: no statement here joins on the id, which
  -- has no index of its own.
  SELECT coalesce(array_agg(l.otid) FILTER (WHERE s.ok AND l.bumps = s.bumps), '{}'),
         coalesce(array_agg(l.otid) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}'),
         coalesce(array_agg(s.ok) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}'),
         coalesce(array_agg(s.ms) FILTER (WHERE NOT (s.ok AND l.bumps = s.bumps)), '{}')
  INTO v_gone, v_keep, v_ok, v_ms
  FROM (
    SELECT x.kind, x.identity, x.id, x.bumps, x.ok, x.ms
    FROM jsonb_to_recordset(p_items) AS x(kind text, identity text, id bigint, bumps integer, ok boolean, ms double precision)
    ORDER BY x.kind, x.identity
  ) s
  CROSS JOIN LATERAL (
    SELECT o.ctid AS otid, o.id AS oid, o.bumps FROM "dmm"."dmm_outbox" o
    WHERE o.namespace = p_namespace AND o.kind = s.kind AND o.identity = s.identity
    LIMIT 1 FOR UPDATE
  ) l
  -- A row whose id changed is another row for the same identity (this one was settled by
  -- someone else and a notify made a new one): it is left alone.
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
