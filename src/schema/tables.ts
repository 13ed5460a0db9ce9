/**
 * dmm's tables, in their own Postgres schema `dmm` so that an app's `drizzle-kit push` and
 * `generate` never touch them. Apps import these from `dmm/schema` for typed reads and joins;
 * they must not re-export them from the schema files their own drizzle.config.ts reads.
 */
import { sql } from "drizzle-orm";
import { bigint, boolean, customType, index, integer, jsonb, pgSchema, primaryKey, text, timestamp } from "drizzle-orm/pg-core";

/** The Postgres schema that holds every dmm table, function and trigger. */
export const dmmSchema = pgSchema("dmm");

/**
 * Text compared byte by byte (`COLLATE "C"`), for the key columns: namespace, kind, identity.
 * Keys are matched and ordered, never shown in a language's order, and a bytewise compare is a
 * `memcmp`, where the database's default collation (`en_US.UTF-8`, even `C.UTF-8`) goes through
 * the C library's `strcoll` for every comparison in every index descent and sort (migration
 * 0011 says what that cost). Every statement that orders keys to fix a lock order orders them
 * `COLLATE "C"` as well, so all of dmm's statements lock in one order.
 */
const keyText = customType<{ data: string; driverData: string }>({
  dataType: () => 'text COLLATE "C"',
});

/**
 * One row per (namespace, kind, identity): the cache plus bookkeeping. Hot columns that change
 * on every claim and finish (lease_*, cache, attempts, observed_generation) are not indexed,
 * so those updates stay HOT; the table has fillfactor 40 for the same reason (migration 0006 says why).
 */
export const dmmMatter = dmmSchema.table(
  "dmm_matter",
  {
    namespace: keyText("namespace").notNull(),
    kind: keyText("kind").notNull(),
    identity: keyText("identity").notNull(),
    /** The materializer's own fields as last saved (by a notify or a successful run). */
    cache: jsonb("cache").notNull().default(sql`'{}'::jsonb`),
    /** Bumped by every notify and touch; a run is wanted while it exceeds observed_generation. */
    generation: bigint("generation", { mode: "number" }).notNull().default(1),
    /** The generation the last successful (or parked) run started from. */
    observedGeneration: bigint("observed_generation", { mode: "number" }).notNull().default(0),
    /** Failed runs since the last success; drives the backoff. */
    attempts: integer("attempts").notNull().default(0),
    lastError: text("last_error"),
    /** Set when a run threw TerminalError; cleared by the next notify or touch. */
    parked: boolean("parked").notNull().default(false),
    /** Next scheduled run (retry, requeue, resync); a dirty matter with a future due_at waits. */
    dueAt: timestamp("due_at", { withTimezone: true, mode: "date" }),
    /** Why the scheduled run at due_at happens: retry, requeue or resync. */
    dueReason: text("due_reason"),
    /** The worker holding the lease, or null. */
    leaseOwner: text("lease_owner"),
    /** Fencing epoch: bumped by every claim; every later write of the run checks it. */
    leaseEpoch: bigint("lease_epoch", { mode: "number" }).notNull().default(0),
    leaseUntil: timestamp("lease_until", { withTimezone: true, mode: "date" }),
    /** Last time a notify, the scheduler or the sweep enqueued this matter (the sweep's grace). */
    dispatchedAt: timestamp("dispatched_at", { withTimezone: true, mode: "date" }),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (t) => [
    /**
     * Identity first (migration 0025), as the outbox's: every hot statement looks a matter up by
     * its whole key, and a descent's comparisons then mostly end at the first column instead of
     * going through namespace and kind, the same for every row of a kind. Listing a kind in
     * key order reads the index in identity order and skips other kinds' entries.
     */
    primaryKey({ name: "dmm_matter_pkey", columns: [t.identity, t.kind, t.namespace] }),
    index("dmm_matter_due_idx").on(t.namespace, t.dueAt).where(sql`${t.dueAt} is not null`),
  ],
);

/**
 * Transactional outbox: one pending row per identity, written by the trigger on dmm_matter in
 * the notifying transaction. The relay (or, without NATS, the workers) take rows with
 * SKIP LOCKED and delete them once dispatched. Fillfactor 50 (migration 0010), so that the
 * relay's in-flight mark of a whole round stays a HOT update. Unlogged (migration 0015; Drizzle
 * cannot say so here): a row only repeats what dmm_matter says, and after a crash empties the
 * table the sweep rebuilds it from there.
 */
export const dmmOutbox = dmmSchema.table(
  "dmm_outbox",
  {
    /** Row id: orders rows of one availability time, and names a token (msgID) with `bumps`. */
    id: bigint("id", { mode: "number" }).notNull().generatedAlwaysAsIdentity(),
    namespace: keyText("namespace").notNull(),
    kind: keyText("kind").notNull(),
    identity: keyText("identity").notNull(),
    /** Rows refused by JetStream (a token is already pending or running) wait until then. */
    availableAt: timestamp("available_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    /**
     * Set by a relay while it publishes the row's token (no transaction spans the publish):
     * other relays and Postgres-only takes skip the row until then. Not indexed, so marking a
     * row in flight is a HOT update.
     */
    relayUntil: timestamp("relay_until", { withTimezone: true, mode: "date" }),
    /** How often dispatch was deferred; spaces out the retries. */
    tries: integer("tries").notNull().default(0),
    /**
     * Bumped by every enqueue that finds the row already there. The relay deletes a row only if
     * this is unchanged since it took the row, so a notify that lands while its token is being
     * published is never lost.
     */
    bumps: integer("bumps").notNull().default(0),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (t) => [
    /**
     * One row per identity (every upsert of the outbox goes through it; the relay finds its rows
     * again by row version). No index on `id` alone: an index fewer to write for every notify of
     * an identity that is not pending yet. Identity first (migration 0020): the outbox is only
     * ever looked up by whole key, never listed in key order, and with the identity first most
     * comparisons of a descent end at the first column instead of going through namespace and
     * kind, which are the same for every row of a kind.
     */
    primaryKey({ name: "dmm_outbox_pkey", columns: [t.identity, t.kind, t.namespace] }),
    /**
     * Takes go kind by kind, oldest first: an ordered scan, never a sort. Partial on a predicate
     * that always holds (`available_at > '-infinity'`), so that only queries that state it (every
     * take does) can use it: a look-up by key always takes the primary key. Without statistics
     * the planner prices both indexes the same for such a look-up, and picking this one filters
     * the whole kind (migration 0009). Not `IS NOT NULL`: newer planners drop that test on a
     * NOT NULL column from queries, and could then no longer match the index.
     */
    index("dmm_outbox_take_idx").on(t.namespace, t.kind, t.availableAt, t.id).where(sql`${t.availableAt} > '-infinity'::timestamptz`),
  ],
);

/**
 * Live worker processes. Each holds a session advisory lock on its id while alive, so the
 * sweep can tell a dead worker (lock free) from a slow one and reclaim its leases at once
 * instead of waiting for them to expire. Also what `dmm status` lists as workers.
 */
export const dmmWorker = dmmSchema.table("dmm_worker", {
  id: text("id").primaryKey(),
  namespace: text("namespace").notNull(),
  /** The second key of the advisory lock (`pg_advisory_lock(6581613, lock_key)`). */
  lockKey: integer("lock_key").notNull(),
  host: text("host").notNull(),
  pid: integer("pid").notNull(),
  startedAt: timestamp("started_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});
