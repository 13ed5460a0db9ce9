-- Custom migration: new matters reach the outbox with a plain INSERT, not an upsert.
--
-- The statement trigger of 0004 inserted the outbox rows of a notify's new matters with
-- ON CONFLICT DO UPDATE. An upsert is a speculative insertion: a conflict check, the insert,
-- then a confirm record in the WAL, for every row (pg_waldump of a 20k notify: 40 000
-- HEAP_CONFIRM records, two per item: the matter's upsert and this one). A new matter cannot
-- have an outbox row made by dmm (every other writer of the outbox goes through an existing
-- matter, and a concurrent notify of the same new identity waits on the matter's key first),
-- so the rows go in with a plain INSERT of those that have none. A row that is there anyway (an
-- app deleted a matter whose row was pending, or made a row by hand) is bumped as before, in a
-- second statement that only runs then.
-- The look-up is one primary-key probe per new matter: without the settings below, the planner
-- (a transition table of unknown size, an outbox without statistics) chose a merge anti join
-- over a sequential scan and sort of the whole outbox, 26 ms per 500-row notify with a backlog
-- of 50 000 rows, where the probes take well under one.
CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() RETURNS trigger LANGUAGE plpgsql
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
  v_target text;
  v_added bigint;
BEGIN
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  SELECT n."namespace", n."kind", n."identity" FROM "inserted" n
  WHERE NOT EXISTS (
    SELECT 1 FROM "dmm"."dmm_outbox" o
    WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity")
  ORDER BY n."namespace", n."kind", n."identity";
  GET DIAGNOSTICS v_added = ROW_COUNT;
  IF v_added < (SELECT count(*) FROM "inserted") THEN
    UPDATE "dmm"."dmm_outbox" o
    SET "bumps" = o."bumps" + 1, "relay_until" = NULL,
        "available_at" = CASE WHEN o."available_at" <= now() THEN o."available_at"
                              ELSE least(greatest(o."available_at", now() + interval '50 milliseconds'),
                                         o."created_at" + interval '1 second') END
    FROM "inserted" n
    WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity"
      AND o."xmin" <> pg_current_xact_id()::xid;
  END IF;
  FOR v_target IN SELECT DISTINCT n."namespace" || ':' || n."kind" FROM "inserted" n LOOP
    PERFORM pg_notify('dmm_outbox', v_target);
  END LOOP;
  RETURN NULL;
END;
$$;
