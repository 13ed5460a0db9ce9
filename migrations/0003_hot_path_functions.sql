-- Custom migration: the claim and finish statements as plpgsql functions.
--
-- Why functions: each of them locks rows first (SKIP LOCKED, one primary-key lookup per key)
-- and then updates exactly the locked row versions by ctid, in a second statement. In
-- READ COMMITTED the second statement takes a fresh snapshot, so it sees the newest version of
-- every row the first one locked (a notify may have committed in between), and a TID scan needs
-- no plan choice at all: the claim stays a handful of index lookups per key whatever the
-- statistics say (autovacuum may be off or behind; a freshly loaded table has none), where one
-- combined statement was planned as a scan of the whole namespace and got 20x slower.
-- One call is still one round trip and one commit for a whole batch. `enable_seqscan = off`
-- for the call: on a table of a few hundred pages the planner prices a TID scan of 256 rows
-- (random reads) above a sequential scan of the whole table, which then costs more than the
-- rest of the claim together; every statement here is a key or TID lookup by design.
--
-- Lock order: outbox rows before matters in take_and_claim, both SKIP LOCKED (never waits);
-- matters in key order in finish_runs (see src/store/notify.ts).

-- The lease stamp of both claims: of the matter row versions p_tids (locked by the caller),
-- those that are claimable get p_owner's lease and a new fencing epoch. Returns them.
CREATE FUNCTION "dmm"."stamp_leases"(p_tids tid[], p_owner text, p_lease_ms integer)
RETURNS TABLE (identity text, cache jsonb, generation bigint, attempts integer, lease_epoch bigint)
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH stamped AS (
    UPDATE "dmm"."dmm_matter" m SET
      lease_owner = p_owner, lease_epoch = m.lease_epoch + 1,
      lease_until = now() + p_lease_ms * interval '1 millisecond', updated_at = now()
    WHERE m.ctid = ANY (p_tids)
      AND (m.lease_owner IS NULL OR m.lease_until < now())
      AND (CASE WHEN m.due_at IS NULL THEN m.generation > m.observed_generation ELSE m.due_at <= now() END)
    RETURNING m.identity, m.cache, m.generation, m.attempts, m.lease_epoch
  )
  SELECT t.identity, t.cache, t.generation, t.attempts, t.lease_epoch FROM stamped t;
END;
$$;
--> statement-breakpoint
-- Postgres-only dispatch: take up to p_limit available outbox rows of one kind, oldest first,
-- and lease their matters. Returns the claimed matters, plus one row with a null identity when
-- none was claimed; `taken` on every row counts the outbox rows taken in all, `next_in_ms` says
-- when the next row of the kind becomes available (null: none is left).
CREATE FUNCTION "dmm"."take_and_claim"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_limit integer)
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
    WHERE o.namespace = p_namespace AND o.kind = p_kind AND o.available_at <= now()
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
    WHERE o.namespace = p_namespace AND o.kind = p_kind AND (o.relay_until IS NULL OR o.relay_until <= now())
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
  WHERE o.namespace = p_namespace AND o.kind = p_kind AND (o.relay_until IS NULL OR o.relay_until <= now())
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
-- Token dispatch: lease the matters named by a batch of tokens of one kind (identities without
-- duplicates). One row per requested key, by its 0-based position `ord`, with its status:
-- claimed, idle (nothing to do now), early (due within the horizon, in due_in_ms), busy
-- (another transaction holds the row) or missing.
CREATE FUNCTION "dmm"."claim_keys"(p_namespace text, p_kind text, p_owner text, p_lease_ms integer, p_identities text[])
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
    SELECT w.ord, w.ident, l.mtid, l.prev_owner, l.due_at, l.due_reason
    FROM want w
    LEFT JOIN LATERAL (
      SELECT m.ctid AS mtid, m.lease_owner AS prev_owner, m.due_at, m.due_reason
      FROM "dmm"."dmm_matter" m
      WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = w.ident
      LIMIT 1 FOR UPDATE SKIP LOCKED
    ) l ON true
  )
  SELECT
    array_agg(k.ord ORDER BY k.ord),
    array_agg(CASE
      WHEN k.mtid IS NOT NULL THEN
        CASE WHEN k.prev_owner IS NULL AND k.due_at > now() AND k.due_at < now() + interval '5 seconds' THEN 'early' ELSE 'locked' END
      WHEN EXISTS (SELECT 1 FROM "dmm"."dmm_matter" m
                   WHERE m.namespace = p_namespace AND m.kind = p_kind AND m.identity = k.ident) THEN 'busy'
      ELSE 'missing' END ORDER BY k.ord),
    array_agg(k.mtid ORDER BY k.ord),
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
    CASE WHEN c.identity IS NOT NULL THEN 'claimed' WHEN k.pre = 'locked' THEN 'idle' ELSE k.pre END,
    c.cache, c.generation, c.attempts, c.lease_epoch, k.reason,
    CASE WHEN k.pre = 'early' THEN k.due ELSE NULL END
  FROM unnest(v_ords, v_pre, v_reasons, v_due) AS k(ord, pre, reason, due)
  LEFT JOIN claimed c ON c.identity = p_identities[k.ord + 1]
  ORDER BY k.ord;
END;
$$;
--> statement-breakpoint
-- The fenced end of runs of one kind. p_items is a JSON array of
-- {ord, owner, identity, epoch, gen, outcome, base, cache, error, due_ms, due_reason} (no cache
-- and base: the run left the cache as it found it); only a
-- run that still holds its lease (owner, epoch, unexpired) writes anything. A matter whose
-- generation moved during its run goes back on the outbox here, so exactly one more run
-- follows. Returns (ord, dirty) for every saved run; a missing ord lost its lease.
CREATE FUNCTION "dmm"."finish_runs"(p_namespace text, p_kind text, p_items jsonb)
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
  FROM (SELECT DISTINCT x.identity AS ident FROM jsonb_to_recordset(p_items) AS x(identity text) ORDER BY 1) k
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
--> statement-breakpoint
-- A notify that finds its identity's outbox row already there bumps it:
-- - it clears the in-flight mark (relay_until) of a relay that may have died while publishing
--   it, and the bump gives the re-publish a new msgID (see src/bucket.ts), so JetStream does
--   not drop it as a duplicate of the token the row had before;
-- - a row that is waiting (a coalescing pause after a run that saw notifies, a busy token, a
--   due retry) waits until the notifies pause for 50 ms, but never past 1 s after the row was
--   made: a burst of notifies on a hot identity costs one more run, not one per run length.
-- A row that is available stays available: the first notify of a quiet matter is never delayed.
CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  VALUES (NEW."namespace", NEW."kind", NEW."identity")
  ON CONFLICT ("namespace", "kind", "identity") DO UPDATE
    SET "bumps" = "dmm_outbox"."bumps" + 1, "relay_until" = NULL,
        "available_at" = CASE WHEN "dmm_outbox"."available_at" <= now() THEN "dmm_outbox"."available_at"
                              ELSE least(greatest("dmm_outbox"."available_at", now() + interval '50 milliseconds'),
                                         "dmm_outbox"."created_at" + interval '1 second') END;
  -- Postgres folds identical notifications of one transaction into one.
  PERFORM pg_notify('dmm_outbox', NEW."namespace" || ':' || NEW."kind");
  RETURN NULL;
END;
$$;
--> statement-breakpoint
-- The relay's take: up to p_limit available rows of the namespace, shared evenly among its
-- kinds (walked with a skip scan of dmm_outbox_take_idx, so a kind with a huge backlog does not
-- starve the others), each kind oldest first. The rows are marked in flight for
-- p_inflight_ms (relay_until, not indexed: a HOT update), because no transaction spans the
-- publish. `more` is true when some kind filled its share (the relay should take again). When
-- nothing was taken, one row with a null id says in `next_in_ms` when the next row becomes
-- available (null: none).
CREATE FUNCTION "dmm"."relay_take"(p_namespace text, p_limit integer, p_inflight_ms integer)
RETURNS TABLE (id bigint, kind text, identity text, tries integer, bumps integer, born text, more boolean, next_in_ms double precision)
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
    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::text, false, NULL::double precision;
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
    RETURNING o.id, o.kind, o.identity, o.tries, o.bumps, (extract(epoch FROM o.created_at) * 1000000)::bigint::text AS born
  )
  SELECT m.id, m.kind, m.identity, m.tries, m.bumps, m.born, v_more, NULL::double precision FROM marked m
  UNION ALL
  -- When none was taken: when the next row becomes available (rows in flight come back at
  -- their relay_until, within the relay's poll interval).
  SELECT NULL, NULL, NULL, NULL, NULL, NULL, false,
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
-- The relay's settle after a publish. p_items is a JSON array of {id, bumps, ok, ms}: a
-- dispatched row is deleted unless a notify bumped it meanwhile (that one is made available
-- again, for another token); a refused or failed row waits `ms` and counts a try. Rows are
-- locked in key order (the order of the outbox trigger's upserts). Returns how many rows were
-- deleted and how many kept.
CREATE FUNCTION "dmm"."relay_settle"(p_namespace text, p_items jsonb)
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
    SELECT o.id AS oid FROM jsonb_to_recordset(p_items) AS x(id bigint)
    CROSS JOIN LATERAL (SELECT o.id, o.kind, o.identity FROM "dmm"."dmm_outbox" o WHERE o.id = x.id) o
    ORDER BY o.kind, o.identity
  ) s
  CROSS JOIN LATERAL (
    SELECT o.ctid AS otid FROM "dmm"."dmm_outbox" o WHERE o.id = s.oid AND o.namespace = p_namespace FOR UPDATE
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
