/**
 * Claims: lock matters with `FOR UPDATE SKIP LOCKED` and stamp a fenced lease on those that
 * need a run, many identities per statement (one commit serves a whole batch).
 */
import { sql } from "drizzle-orm";
import { pgArray, rows, SOFT_COMMIT, type Executor } from "./db.js";
import type { RunReason } from "../types.js";

/** A matter this worker now holds a lease on. */
export interface ClaimedMatter {
  kind: string;
  identity: string;
  /** The cache as stored at claim time; also the base of the merge at finish. */
  cache: Record<string, unknown>;
  /** The generation this run materializes. */
  generation: number;
  /** Failed attempts before this run. */
  attempts: number;
  /** The fencing epoch every later write of this run must present. */
  epoch: number;
  reason: RunReason;
  /** The worker id stamped on the lease; every fenced write presents it with the epoch. */
  owner: string;
}

/**
 * What became of one requested key:
 * - `claimed`: leased to us, run it;
 * - `idle`: nothing to do now (clean, parked, or leased by a live run whose finish re-checks);
 * - `early`: a retry/requeue is due in `dueInMs`; try again then;
 * - `busy`: another transaction holds the row lock (a notify committing); try again shortly;
 * - `missing`: no such matter.
 */
export type ClaimStatus =
  | { status: "claimed"; matter: ClaimedMatter }
  | { status: "idle" }
  | { status: "early"; dueInMs: number }
  | { status: "busy" }
  | { status: "missing" };

/** How far ahead a not-yet-due key is kept (re-tried at its due time) instead of dropped; the SQL functions of migration 0003 use the same 5 seconds. */
export const EARLY_HORIZON_MS = 5_000;

interface ClaimRow {
  ord: number;
  status: "claimed" | "idle" | "early" | "busy" | "missing";
  cache: Record<string, unknown> | null;
  generation: string | null;
  attempts: number | null;
  epoch: string | null;
  reason: RunReason | null;
  due_in_ms: number | null;
}

/** The claimable condition of the sweep; the lease stamps of `dmm.take_and_claim` and `dmm.claim_keys` (migrations 0021, 0022) spell the same. */
export const CLAIMABLE = sql.raw(
  `(m.lease_owner is null or m.lease_until < now())
   and (case when m.due_at is null then m.generation > m.observed_generation else m.due_at <= now() end)`,
);

/**
 * Claims the matters named by tokens of one kind, in one call of `dmm.claim_keys` (migration
 * 0003: lock each key with SKIP LOCKED, then stamp the leases by ctid). Returns one status per
 * key, in order. A key with an origin (a batch token's: the outbox row it was relayed from)
 * whose identity has an outbox row other than that one (another row, or that row bumped since)
 * is `idle` (migration 0007): that newer row dispatches it, after its coalescing pause.
 */
export async function claimKeys(
  exec: Executor,
  namespace: string,
  owner: string,
  leaseMs: number,
  kind: string,
  identities: string[],
  origins?: ({ row: number; bumps: number } | null)[],
): Promise<ClaimStatus[]> {
  if (identities.length === 0) return [];
  // One claim per identity: a key asked for twice in a batch (a recovered key and its token)
  // is claimed once; its other occurrences are idle. Claiming both would hand one lease to two
  // runs.
  const firstAt = new Map<string, number>();
  identities.forEach((id, i) => firstAt.has(id) || firstAt.set(id, i));
  if (firstAt.size < identities.length) {
    const unique = [...firstAt.keys()];
    // Of an identity's origins, the newest stands for all (none: one of them came without).
    const origin = new Map<string, { row: number; bumps: number } | null>();
    identities.forEach((id, i) => {
      const o = origins?.[i] ?? null;
      const seen = origin.get(id);
      if (seen === undefined) origin.set(id, o);
      else if (seen !== null && (o === null || o.row > seen.row || (o.row === seen.row && o.bumps > seen.bumps))) origin.set(id, o);
    });
    const statuses = await claimKeys(exec, namespace, owner, leaseMs, kind, unique, origins && unique.map((id) => origin.get(id)!));
    const byId = new Map(unique.map((id, i) => [id, statuses[i]!]));
    return identities.map((id, i) => (firstAt.get(id) === i ? byId.get(id)! : { status: "idle" as const }));
  }
  const given = origins?.some(Boolean) ? origins : null;
  const result = await rows<ClaimRow>(
    exec,
    sql`select c.ord, c.status, c.cache, c.generation::text, c.attempts, c.epoch::text, c.reason, c.due_in_ms
        from ${SOFT_COMMIT}, dmm.claim_keys(${namespace}, ${kind}, ${owner}, ${leaseMs}::int, ${pgArray(identities)}::text[],
          ${given && pgArray(given.map((o) => o?.row))}::bigint[], ${given && pgArray(given.map((o) => o?.bumps))}::integer[]) c`,
  );
  return result.map((r, i) => toStatus(r, { kind, identity: identities[i]! }, owner));
}

function toStatus(r: ClaimRow, key: { kind: string; identity: string }, owner: string): ClaimStatus {
  switch (r.status) {
    case "claimed":
      return {
        status: "claimed",
        matter: {
          kind: key.kind,
          identity: key.identity,
          cache: (r.cache ?? {}) as Record<string, unknown>,
          generation: Number(r.generation),
          attempts: r.attempts ?? 0,
          epoch: Number(r.epoch),
          reason: r.reason ?? "notify",
          owner,
        },
      };
    case "early":
      return { status: "early", dueInMs: Math.ceil(r.due_in_ms ?? 0) + 1 };
    default:
      return { status: r.status };
  }
}

interface TakeRow {
  identity: string;
  cache: Record<string, unknown>;
  generation: string;
  attempts: number;
  lease_epoch: string;
  reason: RunReason;
}

/**
 * Postgres-only dispatch: takes up to `limit` available outbox rows of `kind` and claims their
 * matters in the same call (`dmm.take_and_claim`, migration 0003). Rows whose matter is locked by another transaction stay on the
 * outbox (retried shortly); rows whose matter is not due yet wait until it is; the rest are
 * deleted, claimed or not (a live lease's finish re-enqueues if its matter changed).
 * Returns the claimed matters, how many outbox rows were taken in all, and in how many ms the
 * next row of the kind becomes available (null: none left).
 */
export async function takeAndClaim(
  exec: Executor,
  namespace: string,
  owner: string,
  leaseMs: number,
  kind: string,
  limit: number,
): Promise<{ claimed: ClaimedMatter[]; taken: number; nextInMs: number | null }> {
  const result = await rows<TakeRow & { taken: number; next_in_ms: number | null }>(
    exec,
    sql`select t.identity, t.cache, t.generation::text, t.attempts, t.epoch::text as lease_epoch, t.reason, t.taken, t.next_in_ms
        from ${SOFT_COMMIT}, dmm.take_and_claim(${namespace}, ${kind}, ${owner}, ${leaseMs}::int, ${limit}::int) t`,
  );
  const taken = result[0]?.taken ?? 0;
  const next = result[0]?.next_in_ms ?? null;
  const nextInMs = next === null ? null : Math.max(0, next);
  const claimed = result
    .filter((r) => r.identity !== null)
    .map((r) => ({
      kind,
      identity: r.identity,
      cache: r.cache ?? {},
      generation: Number(r.generation),
      attempts: r.attempts,
      epoch: Number(r.lease_epoch),
      reason: r.reason,
      owner,
    }));
  return { claimed, taken, nextInMs };
}

