-- Custom migration: the takes can only be planned as an ordered scan of the take index, and no
-- dmm function is JIT-compiled.
--
-- Each hot function keeps one generic plan per connection (plan_cache_mode =
-- force_generic_plan), planned at its first call. Without statistics on the outbox (autovacuum
-- off or behind, a fresh backlog) the planner estimates one row for "namespace = $1 AND kind =
-- $2" whatever the table holds, so "the oldest rows of the kind" costs the same through the take
-- index as through the primary key plus a sort of that one row, and the smaller primary key
-- wins once the outbox is large when the connection first plans: then every take read every
-- outbox row of the kind and sorted them. A Postgres-only drain of a 50,000-row backlog took
-- 110-120 us of Postgres CPU per item in take_and_claim alone (7-8k items/s instead of 21-23k),
-- and a relay's relay_take 34 us per item; which plan a connection got depended on how large the
-- backlog was when it first took, which made benchmark runs differ by 2x.
-- enable_sort = off prices the sort out, so the take index (which returns rows in take order)
-- is always chosen; the functions' other statements need no sort, or have no alternative to one.
--
-- jit = off: the planner settings that pin these plans (enable_seqscan, enable_sort, ...) add a
-- "disabled" cost of 10^10 to any plan that still needs the disabled node (relay_take's window
-- over its per-kind takes needs a sort), which is far above jit_above_cost, and Postgres then
-- JIT-compiled that statement on every call: 140 ms per relay round. These statements are
-- small; compiling never pays.
ALTER FUNCTION "dmm"."take_and_claim"(text, text, text, integer, integer) SET enable_sort = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."take_and_claim"(text, text, text, integer, integer) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."relay_take"(text, integer, integer) SET enable_sort = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."relay_take"(text, integer, integer) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."claim_keys"(text, text, text, integer, text[], bigint[], integer[]) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."finish_runs"(text, text, jsonb) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."stamp_leases"(tid[], text, integer) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."relay_settle"(text, jsonb) SET jit = off;--> statement-breakpoint
ALTER FUNCTION "dmm"."tg_dmm_matter__outbox_inserted"() SET jit = off;
