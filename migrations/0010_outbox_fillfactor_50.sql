-- Custom migration: outbox rows are inserted into pages with half their room free, so that the relay's in-flight mark stays a HOT update.
--
-- A relay round marks up to 500 outbox rows in flight (relay_until) in one transaction, and a
-- notify inserts rows densely, so most marks found no room on their page: each became a new
-- row version elsewhere with two new index entries (primary key and take index) and a lock
-- record. pg_waldump of a 20k-row relay on one connection: 18 875 non-HOT updates and 37 981
-- index inserts at fillfactor 100; at 50, every mark was HOT. Relay WAL 542 -> 254 B/item,
-- its Postgres CPU 50 -> 25 us/item. Outbox rows are short-lived, so the emptier pages cost
-- little space. The setting applies to pages filled from now on.
ALTER TABLE "dmm"."dmm_outbox" SET (fillfactor = 50);
