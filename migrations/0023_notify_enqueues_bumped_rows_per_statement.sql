-- Custom migration: dmm's own notify and touch go through dmm.notify_matters, which puts the
-- matters whose generation it bumped on the outbox in one statement, instead of one trigger call
-- per matter.
--
-- A notify of matters that exist already (the common case in production: the same identities
-- notified again and again) fired the row trigger "10_dmm_matter__outbox_update" once per matter:
-- a plpgsql call, an INSERT ... ON CONFLICT planned and run on its own, and a pg_notify. Of the
-- 20 us of Postgres CPU such a notify cost per matter (batches of 500, one connection, 2-core AMD
-- EPYC), 12.5 us were that trigger; a notify of new matters, whose outbox rows the statement
-- trigger of 0004/0019 inserts in one statement, cost 11.6. (A statement trigger cannot take the
-- update path over: Postgres refuses transition tables on a trigger with a column list, and
-- without the list every take, finish and heartbeat would fill them.)
--
-- notify_matters sets the transaction-local setting dmm.enqueuing to 'on' around its upsert, the
-- row trigger's WHEN skips rows while it is on, and the function then inserts or bumps the
-- outbox rows of the matters its upsert updated, in key order, as the trigger did, and wakes the
-- workers once per kind. Every other writer of generation (an app's own UPDATE, workers of the
-- previous version during a rolling upgrade) still goes through the row trigger. Locks are taken
-- in the same order as before: all matter rows of the statement first (the row trigger also ran
-- after the statement), then the outbox rows. An error inside the function aborts the
-- transaction or the savepoint around it, which also rolls the setting back.
CREATE FUNCTION "dmm"."notify_matters"(p_namespace text, p_kinds text[], p_identities text[], p_caches text[], p_touch boolean)
RETURNS void LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  v_kinds text[];
  v_ids text[];
  v_target text;
BEGIN
  PERFORM set_config('dmm.enqueuing', 'on', true);
  WITH up AS (
    INSERT INTO "dmm"."dmm_matter" AS m ("namespace", "kind", "identity", "cache", "dispatched_at")
    SELECT p_namespace, x.kind, x.identity, CASE WHEN p_touch THEN '{}'::jsonb ELSE x.cache::jsonb END, now()
    FROM unnest(p_kinds, p_identities, p_caches) AS x(kind, identity, cache)
    ORDER BY x.kind COLLATE "C", x.identity COLLATE "C"
    ON CONFLICT ("namespace", "kind", "identity") DO UPDATE SET
      "cache" = CASE WHEN p_touch THEN m."cache" ELSE excluded."cache" END,
      "generation" = m."generation" + 1,
      "parked" = false, "due_at" = NULL, "due_reason" = NULL,
      "dispatched_at" = now(), "updated_at" = now()
    -- xmax is set on the row version an ON CONFLICT update wrote, and 0 on one it inserted.
    RETURNING m."kind", m."identity", m."xmax" <> 0 AS bumped
  )
  SELECT coalesce(array_agg(up."kind") FILTER (WHERE up.bumped), '{}'),
         coalesce(array_agg(up."identity") FILTER (WHERE up.bumped), '{}')
  INTO v_kinds, v_ids
  FROM up;
  PERFORM set_config('dmm.enqueuing', '', true);

  IF cardinality(v_ids) > 0 THEN
    -- What the row trigger (tg_dmm_matter__outbox) does, for all of them at once.
    INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
    SELECT p_namespace, u.kind, u.identity FROM unnest(v_kinds, v_ids) AS u(kind, identity)
    ORDER BY u.kind COLLATE "C", u.identity COLLATE "C"
    ON CONFLICT ("namespace", "kind", "identity") DO UPDATE
      SET "bumps" = "dmm_outbox"."bumps" + 1, "relay_until" = NULL,
          "available_at" = CASE WHEN "dmm_outbox"."available_at" <= now() THEN "dmm_outbox"."available_at"
                                ELSE least(greatest("dmm_outbox"."available_at", now() + interval '50 milliseconds'),
                                           "dmm_outbox"."created_at" + interval '1 second') END;
    FOR v_target IN SELECT DISTINCT p_namespace || ':' || u.kind FROM unnest(v_kinds) AS u(kind) LOOP
      PERFORM pg_notify('dmm_outbox', v_target);
    END LOOP;
  END IF;
END;
$$;
--> statement-breakpoint
DROP TRIGGER "10_dmm_matter__outbox_update" ON "dmm"."dmm_matter";
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_update" AFTER UPDATE OF "generation" ON "dmm"."dmm_matter"
  FOR EACH ROW WHEN (NEW."generation" > OLD."generation" AND current_setting('dmm.enqueuing', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox"();
