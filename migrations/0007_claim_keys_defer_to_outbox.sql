-- Custom migration: a batch token defers to a newer outbox row of its identity.
--
-- A batch token does not occupy its identities' subjects (src/relay/batches.ts), so an identity
-- notified while it runs gets further tokens, where a token per identity would have been refused
-- as busy and its outbox row deferred. Those tokens must not start a run that an outbox row is
-- holding back: after a run that saw notifies, its finish puts the row back with the coalescing
-- pause (50 ms after the last notify, at most 1 s), and a late batch token claiming the matter
-- in that pause would skip it. The coalescing benchmark (100 identities notified 100 times each
-- during 20 ms runs) went from 200 runs to 678 with batch tokens.
-- So a batch token names, for each identity, the outbox row it was relayed from (id and bump
-- count), and claim_keys takes them as `p_rows` and `p_bumps`: an identity whose outbox holds a
-- different row, or that row bumped since, is answered `idle` without a claim. That row stands
-- for a newer notify (or a finish's requeue) and dispatches the identity itself when its time
-- comes (a row being published has its own token on the way; a refused or failed publish keeps
-- the row). The relay's own row, not bumped, is still being settled or was deferred after a
-- failed publish (its version changes then, not its id or bumps): the token claims as usual.
-- A null entry (a token per identity, a recovered key) claims as in 0003, as does a call
-- without them.
-- The look-up by key relies on migration 0009 (the take index cannot serve it).
DROP FUNCTION "dmm"."claim_keys"(text, text, text, integer, text[]);
--> statement-breakpoint
CREATE FUNCTION "dmm"."claim_keys"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_identities text[], p_rows bigint[] DEFAULT NULL, p_bumps integer[] DEFAULT NULL)
RETURNS TABLE (ord integer, status text, cache jsonb, generation bigint, attempts integer, epoch bigint, reason text, due_in_ms double precision)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
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
        AND NOT (ob.id = p_rows[w.ord + 1] AND ob.bumps = p_bumps[w.ord + 1])) AS queued
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
      SELECT o.id, o.bumps FROM "dmm"."dmm_outbox" o
      WHERE p_rows[w.ord + 1] IS NOT NULL
        AND o.namespace = p_namespace AND o.kind = p_kind AND o.identity = w.ident
      LIMIT 1
    ) ob ON true
  )
  SELECT
    array_agg(k.ord ORDER BY k.ord),
    array_agg(CASE
      WHEN k.mtid IS NOT NULL THEN
        CASE WHEN k.prev_owner IS NULL AND k.due_at > now() AND k.due_at < now() + interval '5 seconds' THEN 'early'
             WHEN k.queued THEN 'queued' ELSE 'locked' END
      WHEN EXISTS (SELECT 1 FROM "dmm"."dmm_matter" m
                   WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = k.ident) THEN 'busy'
      ELSE 'missing' END ORDER BY k.ord),
    array_agg(CASE WHEN k.queued THEN NULL ELSE k.mtid END ORDER BY k.ord),
    array_agg(CASE WHEN k.prev_owner IS NOT NULL THEN 'recovery'
                   WHEN k.due_at IS NOT NULL THEN coalesce(k.due_reason, 'retry')
                   ELSE 'notify' END ORDER BY k.ord),
    array_agg(greatest(0, extract(epoch FROM (k.due_at - now())) * 1000)::double precision ORDER BY k.ord)
  INTO v_ords, v_pre, v_tids, v_reasons, v_due
  FROM looked k;

  RETURN QUERY
  WITH claimed AS (
    SELECT * FROM "dmm"."stamp_leases"(v_tids, p_owner, p_lease_ms)
  )
  SELECT k.ord,
    CASE WHEN c.identity IS NOT NULL THEN 'claimed' WHEN k.pre IN ('locked', 'queued') THEN 'idle' ELSE k.pre END,
    c.cache, c.generation, c.attempts, c.lease_epoch, k.reason,
    CASE WHEN k.pre = 'early' THEN k.due ELSE NULL END
  FROM unnest(v_ords, v_pre, v_reasons, v_due) AS k(ord, pre, reason, due)
  LEFT JOIN claimed c ON c.identity = p_identities[k.ord + 1]
  ORDER BY k.ord;
END;
$$;
