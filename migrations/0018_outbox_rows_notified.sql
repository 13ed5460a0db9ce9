-- Custom migration: a notify statement that enqueues a few new matters also tells the listening
-- relays which outbox rows it made, so that their tokens go out without a relay round first.
--
-- With NATS dispatch a notified matter's token was published only after the relay had woken
-- on the notification and taken the row back from Postgres (dmm.relay_take): on an idle system
-- that round trip was a third of the time from commit to run start (traced in process: commit
-- -> relay awake 0.1 ms -> rows taken 0.7 ms -> token at the server 1.5 ms -> claimed 2.9 ms).
-- Now, when a statement's trigger inserted at most 8 outbox rows, it also sends their ids,
-- bumps, creation times and keys on the channel dmm_outbox_rows (the payload JSON stays far
-- below NOTIFY's 8000 bytes; longer ones are not sent). A relay publishes those tokens at once,
-- with the very msgID its own round will use for the row (namespace, row id, bumps, creation
-- time), so JetStream drops the round's publish as a duplicate and the row is deleted as usual.
-- The channel is only a head start: the row, the relay round, the sweep and every guarantee
-- are as before, and the dmm_outbox notification is unchanged for workers of the previous
-- version. Rows a notify only bumped (their identity was pending already) are not sent.
CREATE OR REPLACE FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() RETURNS trigger LANGUAGE plpgsql
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
  v_target text;
  v_added bigint;
  v_count bigint;
  v_rows text;
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
  v_count := (SELECT count(*) FROM "inserted");
  IF v_added < v_count THEN
    UPDATE "dmm"."dmm_outbox" o
    SET "bumps" = o."bumps" + 1, "relay_until" = NULL,
        "available_at" = CASE WHEN o."available_at" <= now() THEN o."available_at"
                              ELSE least(greatest(o."available_at", now() + interval '50 milliseconds'),
                                         o."created_at" + interval '1 second') END
    FROM "inserted" n
    WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity"
      AND o."xmin" <> pg_current_xact_id()::xid;
  END IF;
  -- The rows this statement made (none bumped, none waiting, none in flight), for a head start.
  IF v_added > 0 AND v_count <= 8 THEN
    SELECT json_agg(json_build_array(o."namespace", o."kind", o."identity", o."id", o."bumps",
                                     (extract(epoch FROM o."created_at") * 1000000)::bigint::text))::text
    INTO v_rows
    FROM "inserted" n
    CROSS JOIN LATERAL (
      SELECT o."namespace", o."kind", o."identity", o."id", o."bumps", o."created_at" FROM "dmm"."dmm_outbox" o
      WHERE o."namespace" = n."namespace" AND o."kind" = n."kind" AND o."identity" = n."identity"
        AND o."xmin" = pg_current_xact_id()::xid AND o."bumps" = 0 AND o."available_at" <= now() AND o."relay_until" IS NULL
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
