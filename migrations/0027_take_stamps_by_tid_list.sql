-- Custom migration: take_and_claim stamps its leases through one TID scan of the list of locked
-- row versions, instead of a nested loop that re-scanned a TID scan once per row.
--
-- 0021 joined the matters to unnest(ctids, reasons), so that each row came back with the run
-- reason computed when it was locked: a nested loop whose inner TID scan was re-initialised and
-- re-evaluated for every row. Now the UPDATE reads the rows by `ctid = ANY (ctids)` (the list is
-- evaluated and sorted once), and the reason is computed in RETURNING from the row itself:
-- a claim stamps only the lease columns, so due_at and due_reason are still what the take locked,
-- and the matters whose lease had expired (the "recovery" runs) are passed as a list of
-- identities, empty unless a worker died. Same rows, same conditions, same locks (taken by the
-- first statement), same reasons; the claimed matters come back in the order of their row
-- versions rather than of their outbox rows (nothing relies on the order within one take).
-- Postgres CPU per claimed row on this machine (2-core AMD EPYC), one connection, one backlog of
-- 40,000 new matters taken in batches of 256 by the two versions in turn, three runs:
-- 21.2-22.5 -> 19.3-20.2 us.
CREATE OR REPLACE FUNCTION "dmm"."take_and_claim"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_limit integer)
 RETURNS TABLE(identity text, cache jsonb, generation bigint, attempts integer, epoch bigint, reason text, taken integer, next_in_ms double precision)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $$
#variable_conflict use_column
DECLARE
  v_taken integer;
  v_gone tid[];
  v_defer tid[];
  v_defer_at timestamptz[];
  v_tids tid[];
  v_reasons text[];
  v_recovered text[];
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
    coalesce(array_agg(ident) FILTER (WHERE mtid IS NOT NULL AND NOT early AND prev_owner IS NOT NULL), '{}')
  INTO v_taken, v_gone, v_defer, v_defer_at, v_tids, v_recovered
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
  UPDATE "dmm"."dmm_matter" m SET
    lease_owner = p_owner, lease_epoch = m.lease_epoch + 1,
    lease_until = now() + p_lease_ms * interval '1 millisecond', updated_at = now()
  WHERE m.ctid = ANY (v_tids)
    AND (m.lease_owner IS NULL OR m.lease_until < now())
    AND (CASE WHEN m.due_at IS NULL THEN m.generation > m.observed_generation ELSE m.due_at <= now() END)
  RETURNING m.identity, m.cache, m.generation, m.attempts, m.lease_epoch,
    CASE WHEN m.identity = ANY (v_recovered) THEN 'recovery' WHEN m.due_at IS NOT NULL THEN coalesce(m.due_reason, 'retry') ELSE 'notify' END,
    v_taken, v_next;
  IF NOT FOUND THEN
    RETURN QUERY SELECT NULL::text, NULL::jsonb, NULL::bigint, NULL::integer, NULL::bigint, NULL::text, v_taken, v_next;
  END IF;
END;
$$;
