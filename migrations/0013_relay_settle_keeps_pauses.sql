-- Custom migration: a relay's settle keeps the waiting time a notify or a finish gave a row.
--
-- relay_settle (0005) keeps the rows it cannot delete: those a notify bumped while their token
-- was being published, and those JetStream refused (a token for the identity is pending). It
-- made the first available at once (least(available_at, now())) and the second available after
-- its retry delay (now() + 20 ms, 40 ms, ...), overwriting whatever the row's available_at said
-- by then. But a finish that saw notifies during its run sets the row's available_at 50 ms
-- ahead, and every further notify pushes it on (the coalescing pause, up to 1 s), possibly while
-- a relay has the row in flight: the settle then cut the pause short, and the identity ran again
-- in the middle of the burst. In the benchmark's coalescing scenario (100 identities, each
-- notified every 10 ms for 1 s while runs take 20 ms) that was 220-227 runs with NATS dispatch
-- (2.2 per identity) against 151-200 without.
-- Now a bumped row keeps its available_at (the trigger left it in the past if it was available,
-- so its next token still follows at once), and a refused one waits for the later of its retry
-- delay and its available_at.
CREATE OR REPLACE FUNCTION "dmm"."relay_settle"(p_namespace text, p_items jsonb)
RETURNS TABLE (gone integer, kept integer)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan SET jit = off AS $$
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
    available_at = CASE WHEN k.ok THEN o.available_at ELSE greatest(o.available_at, now() + k.ms * interval '1 millisecond') END,
    tries = CASE WHEN k.ok THEN o.tries ELSE o.tries + 1 END,
    relay_until = NULL
  FROM unnest(v_keep, v_ok, v_ms) AS k(t, ok, ms)
  WHERE o.ctid = ANY (v_keep) AND o.ctid = k.t;
  GET DIAGNOSTICS v_kept = ROW_COUNT;

  RETURN QUERY SELECT cardinality(v_gone), v_kept;
END;
$$;
--> statement-breakpoint
-- claim_keys (0007) answers `idle` for any token, single or batch, whose identity has an outbox
-- row in a coalescing pause (available later, and not because a publish was refused: tries = 0;
-- the finish that sets the pause now resets tries, see finish_runs below): that row dispatches
-- the identity when its time comes. A row waiting out a refused publish (tries > 0) waits for the
-- very token being claimed, which claims as before. 0007 did so
-- only for batch tokens that name another row. But while a run that came from a batch token is
-- in flight, its identity's own subject is free, so the relay publishes tokens per identity for
-- the notifies of the run; one that arrived after the finish claimed the matter at once, in the
-- middle of the pause the finish had just set (traced in the coalescing scenario: runs at 286,
-- 393 and 1152 ms of a 1 s burst, the second from such a token). The outbox look-up by key now
-- happens for every key: one primary-key probe each (0009 keeps the take index out of it).
CREATE OR REPLACE FUNCTION "dmm"."claim_keys"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_identities text[], p_rows bigint[] DEFAULT NULL, p_bumps integer[] DEFAULT NULL)
RETURNS TABLE (ord integer, status text, cache jsonb, generation bigint, attempts integer, epoch bigint, reason text, due_in_ms double precision)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan SET jit = off AS $$
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
--> statement-breakpoint
-- finish_runs (0011): the requeue of a run that saw notifies resets the row's tries. The run's
-- token is done, so a retry delay earned while it was pending no longer applies, and tries = 0
-- marks the row's wait as the coalescing pause for claim_keys above.
CREATE OR REPLACE FUNCTION "dmm"."finish_runs"(p_namespace text, p_kind text, p_items jsonb)
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
      SET bumps = "dmm"."dmm_outbox".bumps + 1, available_at = excluded.available_at, relay_until = NULL, tries = 0;
    PERFORM pg_notify('dmm_outbox', p_namespace || ':' || p_kind);
  END IF;

  RETURN QUERY SELECT u.ord, u.dirty FROM unnest(v_ords, v_dirty) AS u(ord, dirty);
END;
$$;
