-- Custom migration: claim_keys stamps the leases in its result statement too (as take_and_claim
-- does since 0021), and gathers its per-key arrays without sorting each.
--
-- Its result joined the rows stamp_leases returned with the keys by identity text; the stamp is
-- now an UPDATE by ctid nested with the aligned ctid and position arrays, joined back by
-- position. The five arrays of the look-up step were each aggregated with its own ORDER BY (five
-- sorts of the batch); one aggregation fills them all from the same rows in the same order, and
-- each carries the key's position with it, so they need no order. Same locks, same statuses, and
-- a key asked for twice in one call (the caller deduplicates; this is belt and braces) is
-- claimed once, its repeat found idle, where the old join gave both the one lease. Claims of
-- 40,000 keys in batches of 128 (NATS dispatch), one connection (2-core AMD EPYC): 10.6-11.6 ->
-- 10.5 us of Postgres CPU per key. With this, no dmm function calls stamp_leases any more, so
-- it is dropped (workers of the previous version call take_and_claim and claim_keys, never it).
CREATE OR REPLACE FUNCTION "dmm"."claim_keys"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_identities text[], p_rows bigint[] DEFAULT NULL::bigint[], p_bumps integer[] DEFAULT NULL::integer[])
 RETURNS TABLE(ord integer, status text, cache jsonb, generation bigint, attempts integer, epoch bigint, reason text, due_in_ms double precision)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
 SET jit TO 'off'
AS $$
#variable_conflict use_column
DECLARE
  v_ords integer[];
  v_pre text[];
  v_tids tid[];
  v_reasons text[];
  v_due double precision[];
BEGIN
  WITH want AS (
    SELECT w.ord::integer - 1 AS ord, w.ident FROM unnest(p_identities) WITH ORDINALITY AS w(ident, ord)
  ), looked AS (
    SELECT w.ord, w.ident, l.mtid, l.prev_owner, l.due_at, l.due_reason,
      (l.mtid IS NOT NULL AND ob.id IS NOT NULL
        AND ((ob.available_at > now() AND ob.tries = 0)
             OR (p_rows[w.ord + 1] IS NOT NULL AND NOT (ob.id = p_rows[w.ord + 1] AND ob.bumps = p_bumps[w.ord + 1])))) AS queued
    FROM want w
    LEFT JOIN LATERAL (
      SELECT m.ctid AS mtid, m.lease_owner AS prev_owner, m.due_at, m.due_reason
      FROM "dmm"."dmm_matter" m
      WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = w.ident
      LIMIT 1 FOR UPDATE SKIP LOCKED
    ) l ON true
    -- A lateral look-up per key, not EXISTS: the planner turned a correlated EXISTS into one
    -- hashed scan of the kind's whole outbox per call. By key it can only take the primary key
    -- (0009 keeps the take index out of it).
    LEFT JOIN LATERAL (
      SELECT o.id, o.bumps, o.available_at, o.tries FROM "dmm"."dmm_outbox" o
      WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.identity = w.ident
      LIMIT 1
    ) ob ON true
  )
  SELECT
    array_agg(k.ord),
    array_agg(CASE
      WHEN k.mtid IS NOT NULL THEN
        CASE WHEN k.prev_owner IS NULL AND k.due_at > now() AND k.due_at < now() + interval '5 seconds' THEN 'early'
             WHEN k.queued THEN 'queued' ELSE 'locked' END
      WHEN EXISTS (SELECT 1 FROM "dmm"."dmm_matter" m
                   WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = k.ident) THEN 'busy'
      ELSE 'missing' END),
    array_agg(CASE WHEN k.queued THEN NULL ELSE k.mtid END),
    array_agg(CASE WHEN k.prev_owner IS NOT NULL THEN 'recovery'
                   WHEN k.due_at IS NOT NULL THEN coalesce(k.due_reason, 'retry')
                   ELSE 'notify' END),
    array_agg(greatest(0, extract(epoch FROM (k.due_at - now())) * 1000)::double precision)
  INTO v_ords, v_pre, v_tids, v_reasons, v_due
  FROM looked k;

  RETURN QUERY
  WITH claimed AS (
    UPDATE "dmm"."dmm_matter" m SET
      lease_owner = p_owner, lease_epoch = m.lease_epoch + 1,
      lease_until = now() + p_lease_ms * interval '1 millisecond', updated_at = now()
    FROM unnest(v_tids, v_ords) AS s(t, ord)
    WHERE m.ctid = s.t
      AND (m.lease_owner IS NULL OR m.lease_until < now())
      AND (CASE WHEN m.due_at IS NULL THEN m.generation > m.observed_generation ELSE m.due_at <= now() END)
    RETURNING s.ord, m.cache, m.generation, m.attempts, m.lease_epoch
  )
  SELECT k.ord,
    CASE WHEN c.ord IS NOT NULL THEN 'claimed' WHEN k.pre IN ('locked', 'queued') THEN 'idle' ELSE k.pre END,
    c.cache, c.generation, c.attempts, c.lease_epoch, k.reason,
    CASE WHEN k.pre = 'early' THEN k.due ELSE NULL END
  FROM unnest(v_ords, v_pre, v_reasons, v_due) AS k(ord, pre, reason, due)
  LEFT JOIN claimed c ON c.ord = k.ord
  ORDER BY k.ord;
END;
$$
--> statement-breakpoint
DROP FUNCTION "dmm"."stamp_leases"(tid[], text, integer);
