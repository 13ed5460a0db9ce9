-- Custom migration: a deleted matter takes its outbox row with it, so the outbox rows of new
-- matters go in without looking for one first.
--
-- The insert trigger (0008, 0014, 0018) looked up each new matter's key in the outbox before
-- inserting its row, for the one case in which a new matter can find a row there: an app deleted
-- a matter whose row was still pending, then notified the identity again. That look-up is a
-- descent of the outbox's key index per notified item, and the insert descends the same index
-- again for its unique check: about 3 us of Postgres CPU of the 14-16 us a 500-item notify of
-- new matters costs per item (this machine, 40,000 items, one connection). Now a statement
-- that deletes matters deletes their outbox rows in the same statement (an AFTER DELETE
-- trigger; TRUNCATE of the matters empties the outbox), and dmm's other writers of the outbox
-- (sweep, finish, reaper, enqueue, the update trigger) only write rows of matters they hold
-- locked, so a new matter has no outbox row and a plain INSERT is enough.
--
-- Rows left behind by matters deleted before this migration are deleted here. A concurrent
-- notify of an identity being deleted waits on the matter's key, as before, and inserts its row
-- after the delete committed. Lock order is kept: the delete trigger writes outbox rows after
-- the statement locked the matters. A row in flight at a relay when its matter is deleted is
-- gone at settle time, which a settle already allows for.
DELETE FROM "dmm"."dmm_outbox" o
WHERE NOT EXISTS (
  SELECT 1 FROM "dmm"."dmm_matter" m
  WHERE m."namespace" = o."namespace" AND m."kind" = o."kind" AND m."identity" = o."identity");
--> statement-breakpoint
CREATE FUNCTION "dmm"."tg_dmm_matter__outbox_deleted"() RETURNS trigger LANGUAGE plpgsql
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
BEGIN
  DELETE FROM "dmm"."dmm_outbox" o
  USING (SELECT d."namespace", d."kind", d."identity" FROM "deleted" d) d
  WHERE o."namespace" = d."namespace" AND o."kind" = d."kind" AND o."identity" = d."identity";
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_delete" AFTER DELETE ON "dmm"."dmm_matter"
  REFERENCING OLD TABLE AS "deleted" FOR EACH STATEMENT EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox_deleted"();
--> statement-breakpoint
CREATE FUNCTION "dmm"."tg_dmm_matter__outbox_truncated"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM "dmm"."dmm_outbox";
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_truncate" AFTER TRUNCATE ON "dmm"."dmm_matter"
  FOR EACH STATEMENT EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox_truncated"();
--> statement-breakpoint
-- 0018's trigger without the look-up and without the bump of rows found: every row it inserts
-- is new (bumps 0, available now, not in flight), so the head start's payload reads them back
-- by key without further conditions.
CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() RETURNS trigger LANGUAGE plpgsql
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
  v_target text;
  v_added bigint;
  v_rows text;
BEGIN
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  SELECT n."namespace", n."kind", n."identity" FROM "inserted" n
  ORDER BY n."namespace", n."kind", n."identity";
  GET DIAGNOSTICS v_added = ROW_COUNT;
  -- The rows this statement made, for a head start (dmm_outbox_rows, see 0018).
  IF v_added > 0 AND v_added <= 8 THEN
    SELECT json_agg(json_build_array(o."namespace", o."kind", o."identity", o."id", o."bumps",
                                     (extract(epoch FROM o."created_at") * 1000000)::bigint::text))::text
    INTO v_rows
    FROM "inserted" n
    CROSS JOIN LATERAL (
      SELECT o."namespace", o."kind", o."identity", o."id", o."bumps", o."created_at" FROM "dmm"."dmm_outbox" o
      WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity"
      LIMIT 1) o;
    IF v_rows IS NOT NULL AND octet_length(v_rows) <= 7000 THEN
      PERFORM pg_notify('dmm_outbox_rows', v_rows);
    END IF;
  END IF;
  FOR v_target IN SELECT DISTINCT n."namespace" || ':' || n."kind" FROM "inserted" n LOOP
    PERFORM pg_notify('dmm_outbox', v_target);
  END LOOP;
  RETURN NULL;
END;
$$;
