-- The outbox's key is (identity, kind, namespace): identity first.
--
-- Every use of this index is a look-up by the whole key (the insert trigger's unique check, the
-- ON CONFLICT of requeues, sweeps and bumps, claim_keys' check for a newer row, the delete
-- trigger); none lists rows in key order (takes and relay rounds go through dmm_outbox_take_idx).
-- With namespace and kind first, each comparison of a descent compared two columns that are the
-- same for every row of a kind before reaching the identity, each through the fetch of a column
-- that follows a variable-length one. Notify of 40,000 new matters in batches of 500, one
-- connection, Postgres backend CPU (2-core AMD EPYC, 3 runs each): 12.2-12.8 -> 11.4-12.1 us/item.
-- The constraint is re-created under an exclusive lock on the outbox, which holds only what waits
-- for dispatch (a rebuild of milliseconds); the matters' own key keeps its order, which listing
-- matters by kind relies on.
ALTER TABLE "dmm"."dmm_outbox" DROP CONSTRAINT "dmm_outbox_pkey";
--> statement-breakpoint
ALTER TABLE "dmm"."dmm_outbox" ADD CONSTRAINT "dmm_outbox_pkey" PRIMARY KEY("identity","kind","namespace");