-- Custom migration: the outbox trigger's look-up of existing rows is one primary-key probe
-- per new matter, whatever the outbox's statistics say.
--
-- The statement trigger of 0008 inserts the outbox rows of new matters WHERE NOT EXISTS (a row
-- of that key). Its plan is made once per session, at the session's first notify. With
-- statistics that say the outbox is empty (a VACUUM ANALYZE or an autovacuum run while it was),
-- the planner turned the anti join into one full scan of the outbox's primary key per statement,
-- materialized and compared with every new matter: in a 20k-item notify after a VACUUM ANALYZE,
-- 715 us of Postgres CPU per item in the trigger (14.5 s instead of 0.5 s), growing with the
-- outbox. (Hash and merge joins were already off for the function; a nested loop over a
-- materialized inner side was still open.) A LEFT JOIN LATERAL ... LIMIT 1 can only be a
-- parameterized look-up per row, as in claim_keys (0007).
CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() RETURNS trigger LANGUAGE plpgsql
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
  v_target text;
  v_added bigint;
BEGIN
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  SELECT n."namespace", n."kind", n."identity" FROM "inserted" n
  LEFT JOIN LATERAL (
    SELECT true AS hit FROM "dmm"."dmm_outbox" o
    WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity"
    LIMIT 1) o ON true
  WHERE o.hit IS NULL
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
