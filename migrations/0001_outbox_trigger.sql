-- Custom migration: the transactional outbox trigger, the cache merge used by fenced finishes,
-- and storage settings drizzle-kit cannot express.
ALTER TABLE "dmm"."dmm_matter" SET (fillfactor = 70);
--> statement-breakpoint
CREATE FUNCTION "dmm"."tg_dmm_matter__outbox"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- One pending outbox row per identity: a second notify before dispatch coalesces into it,
  -- bumping the row so that a relay publishing it right now keeps it for another round.
  INSERT INTO "dmm"."dmm_outbox" ("namespace", "kind", "identity")
  VALUES (NEW."namespace", NEW."kind", NEW."identity")
  ON CONFLICT ("namespace", "kind", "identity") DO UPDATE SET "bumps" = "dmm_outbox"."bumps" + 1;
  -- Postgres folds identical notifications of one transaction into one.
  PERFORM pg_notify('dmm_outbox', NEW."namespace" || ':' || NEW."kind");
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_insert" AFTER INSERT ON "dmm"."dmm_matter"
  FOR EACH ROW EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox"();
--> statement-breakpoint
CREATE TRIGGER "10_dmm_matter__outbox_update" AFTER UPDATE OF "generation" ON "dmm"."dmm_matter"
  FOR EACH ROW WHEN (NEW."generation" > OLD."generation") EXECUTE FUNCTION "dmm"."tg_dmm_matter__outbox"();
--> statement-breakpoint
-- Three-way merge by top-level field, for a run that finishes after a notify replaced the
-- cache: fields the notify changed (theirs differs from base) win, the run's fields stay
-- otherwise. A missing field is SQL NULL here and stays missing.
CREATE FUNCTION "dmm"."merge_cache"(base jsonb, mine jsonb, theirs jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE(jsonb_object_agg(k, v) FILTER (WHERE v IS NOT NULL), '{}'::jsonb)
  FROM (
    SELECT k, CASE WHEN (theirs -> k) IS DISTINCT FROM (base -> k) THEN theirs -> k ELSE mine -> k END AS v
    FROM (
      SELECT jsonb_object_keys(base) UNION SELECT jsonb_object_keys(mine) UNION SELECT jsonb_object_keys(theirs)
    ) AS keys(k)
  ) AS merged
$$;
