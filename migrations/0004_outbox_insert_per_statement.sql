-- Custom migration: new matters reach the outbox with one statement per notify, not one per row.
--
-- The row trigger of 0001 ran a plpgsql INSERT … ON CONFLICT (plus a pg_notify) for every
-- matter a notify created: an executor start and end per row, the biggest part of a notify's
-- cost. The insert trigger is now a statement trigger that moves all of the statement's new
-- matters to the outbox in one INSERT, in (kind, identity) order like every other writer
-- (src/store/notify.ts), and sends one notification per kind. The update trigger (a notify of
-- an existing matter bumps its generation) stays a row trigger: a statement-level UPDATE
-- trigger would capture a transition table on every claim and finish as well.
-- A new matter cannot have an outbox row yet (every other writer of the outbox goes through
-- an existing matter, and a concurrent notify of the same new identity waits on the matter's
-- key first), so ON CONFLICT here (the same update as the row trigger's of 0003) only keeps
-- the trigger safe against outbox rows made by hand.
CREATE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_target text;
BEGIN
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  SELECT n."namespace", n."kind", n."identity" FROM "inserted" n
  ORDER BY n."namespace", n."kind", n."identity"
  ON CONFLICT ("namespace", "kind", "identity") DO UPDATE
    SET "bumps" = "dmm_outbox"."bumps" + 1, "relay_until" = NULL,
        "available_at" = CASE WHEN "dmm_outbox"."available_at" <= now() THEN "dmm_outbox"."available_at"
                              ELSE least(greatest("dmm_outbox"."available_at", now() + interval '50 milliseconds'),
                                         "dmm_outbox"."created_at" + interval '1 second') END;
  FOR v_target IN SELECT DISTINCT n."namespace" || ':' || n."kind" FROM "inserted" n LOOP
    PERFORM pg_notify('dmm_outbox', v_target);
  END LOOP;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
DROP TRIGGER "10_dmm_matter__outbox_insert" ON "dmm"."dmm_matter";
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_insert" AFTER INSERT ON "dmm"."dmm_matter"
  REFERENCING NEW TABLE AS "inserted"
  FOR EACH STATEMENT EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"();
