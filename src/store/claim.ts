/**
 * Claims: lock matters with `FOR UPDATE SKIP LOCKED` and stamp a fenced lease on those that
 * need a run, many identities per statement (one commit serves a whole batch).
 */
import { sql, type SQL } from "drizzle-orm";
import { jsonParam, rows, type Executor } from "./db.js";
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

/** How far ahead a not-yet-due key is kept (re-tried at its due time) instead of dropped. */
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

/** The claimable condition, shared by every claim and by the sweep. */
export const CLAIMABLE = sql.raw(
  `(m.lease_owner is null or m.lease_until < now())
   and (case when m.due_at is null then m.generation > m.observed_generation else m.due_at <= now() end)`,
);

/**
 * Locks one matter of `kind` by primary key, skipping it if another transaction holds it.
 * Written as a `LIMIT 1` lateral subquery so the planner always does one index lookup per key:
 * a join would be planned as a hash join over every matter of the namespace once the batch is
 * a few hundred keys.
 */
export function lockMatter(namespace: string, kind: string, identity: SQL): SQL {
  return sql`select m.identity, m.lease_owner, m.due_at, m.due_reason
             from dmm.dmm_matter m
             where m.namespace = ${namespace} and m.kind = ${kind} and m.identity = ${identity}
             limit 1 for update skip locked`;
}

/**
 * Stamps the lease on the locked matters of one kind that are claimable. The keys go in as an
 * array (`identity = any(...)`), the one shape the planner always turns into primary-key
 * lookups, and the UPDATE re-finds each row by key (never by ctid): a row changed by a
 * transaction that committed after this statement's snapshot is locked in its newest version,
 * which only a key lookup, with its re-check, finds again.
 */
function stampLeases(namespace: string, kind: string, owner: string, leaseMs: number): SQL {
  return sql`update dmm.dmm_matter m set
               lease_owner = ${owner}, lease_epoch = m.lease_epoch + 1,
               lease_until = now() + ${leaseMs}::int * interval '1 millisecond', updated_at = now()
             where m.namespace = ${namespace} and m.kind = ${kind}
               and m.identity = any(array(select identity from locked)) and ${CLAIMABLE}
             returning m.identity, m.cache, m.generation, m.attempts, m.lease_epoch`;
}

/** The reason of a run, from the matter as locked (before the claim). */
const REASON = sql.raw(`case when l.prev_owner is not null then 'recovery'
                             when l.due_at is not null then coalesce(l.due_reason, 'retry')
                             else 'notify' end`);

/**
 * Claims the matters named by tokens of one kind, in one statement. Returns one status per
 * key, in order.
 */
export async function claimKeys(
  exec: Executor,
  namespace: string,
  owner: string,
  leaseMs: number,
  kind: string,
  identities: string[],
): Promise<ClaimStatus[]> {
  if (identities.length === 0) return [];
  // One claim per identity: a key asked for twice in a batch (a recovered key and its token)
  // is claimed once; its other occurrences are idle. Claiming both would hand one lease to two
  // runs.
  const firstAt = new Map<string, number>();
  identities.forEach((id, i) => firstAt.has(id) || firstAt.set(id, i));
  if (firstAt.size < identities.length) {
    const unique = [...firstAt.keys()];
    const statuses = await claimKeys(exec, namespace, owner, leaseMs, kind, unique);
    const byId = new Map(unique.map((id, i) => [id, statuses[i]!]));
    return identities.map((id, i) => (firstAt.get(id) === i ? byId.get(id)! : { status: "idle" as const }));
  }
  const result = await rows<ClaimRow>(
    exec,
    sql`with want as (
          select w.ord::int - 1 as ord, w.identity
          from unnest(${sql.param(identities)}::text[]) with ordinality as w(identity, ord)
        ), locked as (
          select w.ord, m.identity, m.lease_owner as prev_owner, m.due_at, m.due_reason
          from want w cross join lateral (${lockMatter(namespace, kind, sql`w.identity`)}) m
        ), claimed as (
          ${stampLeases(namespace, kind, owner, leaseMs)}
        )
        select w.ord,
          case when c.identity is not null then 'claimed'
               when l.ord is not null then
                 case when l.due_at is not null and l.due_at > now() and l.due_at < now() + ${EARLY_HORIZON_MS}::int * interval '1 millisecond'
                           and l.prev_owner is null then 'early' else 'idle' end
               when exists (select 1 from dmm.dmm_matter mm
                            where mm.namespace = ${namespace} and mm.kind = ${kind} and mm.identity = w.identity) then 'busy'
               else 'missing' end as status,
          c.cache, c.generation::text, c.attempts, c.lease_epoch::text as epoch, ${REASON} as reason,
          greatest(0, extract(epoch from (l.due_at - now())) * 1000)::float8 as due_in_ms
        from want w
        left join locked l on l.ord = w.ord
        left join claimed c on c.identity = w.identity
        order by w.ord`,
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
 * matters in the same statement. Rows whose matter is locked by another transaction stay on the
 * outbox (retried shortly); rows whose matter is not due yet wait until it is; the rest are
 * deleted, claimed or not (a live lease's finish re-enqueues if its matter changed).
 * Returns the claimed matters and how many outbox rows were taken in all.
 */
export async function takeAndClaim(
  exec: Executor,
  namespace: string,
  owner: string,
  leaseMs: number,
  kind: string,
  limit: number,
): Promise<{ claimed: ClaimedMatter[]; taken: number }> {
  const result = await rows<TakeRow & { taken: number }>(
    exec,
    sql`with taken as (
          select o.id, o.identity from dmm.dmm_outbox o
          where o.namespace = ${namespace} and o.kind = ${kind} and o.available_at <= now()
          order by o.available_at, o.id
          limit ${limit}::int
          for update skip locked
        ), locked as (
          select t.id, m.identity, m.lease_owner as prev_owner, m.due_at, m.due_reason
          from taken t cross join lateral (${lockMatter(namespace, kind, sql`t.identity`)}) m
        ), busy as (
          select t.id from taken t
          where not exists (select 1 from locked l where l.id = t.id)
            and exists (select 1 from dmm.dmm_matter m
                        where m.namespace = ${namespace} and m.kind = ${kind} and m.identity = t.identity)
        ), early as (
          select l.id, l.due_at from locked l
          where l.prev_owner is null and l.due_at > now()
            and l.due_at < now() + ${EARLY_HORIZON_MS}::int * interval '1 millisecond'
        ), deferred as (
          update dmm.dmm_outbox o set
            available_at = coalesce((select e.due_at from early e where e.id = o.id), now() + interval '20 milliseconds'),
            tries = o.tries + 1
          where o.id = any(array(select id from busy union all select id from early))
        ), gone as (
          delete from dmm.dmm_outbox o
          where o.id = any(array(select id from taken except select id from busy except select id from early))
        ), claimed as (
          ${stampLeases(namespace, kind, owner, leaseMs)}
        )
        select c.identity, c.cache, c.generation::text, c.attempts, c.lease_epoch::text, ${REASON} as reason,
               (select count(*)::int from taken) as taken
        from claimed c join locked l on l.identity = c.identity
        union all
        select null, null, null, null, null, null, (select count(*)::int from taken)
        where not exists (select 1 from claimed)`,
  );
  const taken = result[0]?.taken ?? 0;
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
  return { claimed, taken };
}

/** The earliest time an outbox row of `kind` becomes available, in ms from now; null if none. */
export async function nextOutboxInMs(exec: Executor, namespace: string, kind: string): Promise<number | null> {
  const r = await rows<{ ms: number | null }>(
    exec,
    sql`select greatest(0, extract(epoch from (min(available_at) - now())) * 1000)::float8 as ms
        from dmm.dmm_outbox where namespace = ${namespace} and kind = ${kind}`,
  );
  return r[0]?.ms ?? null;
}
