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
-- A row whose id changed is another row for the same identity (the first one was settled by
-- someone else and a notify made a new one): it is left alone. Rows are locked in key order
-- (the order of the outbox trigger's upserts). Returns how many rows were deleted and kept.
CREATE OR REPLACE FUNCTION "dmm"."relay_settle"(p_namespace text, p_items jsonb)
RETURNS TABLE (gone integer, kept integer)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_tids tid[];
  v_gone bigint[];
  v_kept integer;
BEGIN
  SELECT coalesce(array_agg(l.otid), '{}') INTO v_tids
  FROM (
    SELECT x.kind, x.identity, x.id FROM jsonb_to_recordset(p_items) AS x(kind text, identity text, id bigint)
    ORDER BY x.kind, x.identity
  ) s
  CROSS JOIN LATERAL (
    SELECT o.ctid AS otid FROM "dmm"."dmm_outbox" o
    WHERE o.namespace = p_namespace AND o.kind = s.kind AND o.identity = s.identity AND o.id = s.id
    FOR UPDATE
  ) l;

  WITH x AS (SELECT * FROM jsonb_to_recordset(p_items) AS x(id bigint, bumps integer, ok boolean, ms double precision)),
  d AS (
    DELETE FROM "dmm"."dmm_outbox" o USING x
    WHERE o.ctid = ANY (v_tids) AND o.id = x.id AND x.ok AND o.bumps = x.bumps
    RETURNING o.id
  )
  SELECT coalesce(array_agg(d.id), '{}') INTO v_gone FROM d;

  WITH x AS (SELECT * FROM jsonb_to_recordset(p_items) AS x(id bigint, bumps integer, ok boolean, ms double precision))
  UPDATE "dmm"."dmm_outbox" o SET
    available_at = CASE WHEN x.ok THEN least(o.available_at, now()) ELSE now() + x.ms * interval '1 millisecond' END,
    tries = CASE WHEN x.ok THEN o.tries ELSE o.tries + 1 END,
    relay_until = NULL
  FROM x
  WHERE o.ctid = ANY (v_tids) AND o.id = x.id AND NOT (o.id = ANY (v_gone));
  GET DIAGNOSTICS v_kept = ROW_COUNT;

  RETURN QUERY SELECT cardinality(v_gone), v_kept;
END;
$$;
