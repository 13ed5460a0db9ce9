/**
 * The checks a chaos run ends with. Each reads the run's own record (notify log, ledger, cache
 * writes, the notifier's in-memory list) and dmm's tables, and returns its violations: zero
 * for every check, or the run fails.
 *
 * | check | invariant | what counts as a violation |
 * |---|---|---|
 * | `overlap` | 1 | a run started (fenced) before an earlier-started run of the same identity ended (fenced) |
 * | `epoch-order` | 1 | runs of one identity whose lease epochs do not grow with their start times |
 * | `notify-followed` | 2 | a committed notify (generation G) with no completed run that started after it and saw G or later |
 * | `converged` | 2 | at the end (workers stopped): an identity not run at its last generation, leased, parked, or whose cache does not hold `applied == value` |
 * | `zombie-write` | 4 | a committed cache save from a run that did not hold the lease (epoch, owner, expiry) when it committed |
 * | `final-cache` | 4 | a final cache not written by the last completed run, or holding a value that run did not see |
 * | `lost-notify` | 6 | an acknowledged notify missing from Postgres; generations that are not exactly 1..N per identity |
 * | `half-done-notify` | 6 | a notify whose commit failed and did not commit, yet some run saw its value |
 * | `torn-read` | 2, 6 | a run that saw a generation with a value other than the one that generation's notify wrote |
 */
import type postgres from "postgres";
import type { NotifyRecord } from "./notifier.js";

/** One check's outcome. */
export interface CheckResult {
  name: string;
  violations: number;
  /** Up to 5 examples, for the report. */
  samples: unknown[];
}

/** Figures the checks compute on the way. */
export interface CheckFigures {
  ledgerRuns: number;
  completedRuns: number;
  /** Runs by `ctx.reason`. */
  runsByReason: Record<string, number>;
  cacheSaves: number;
  notifyLogRows: number;
  unknownCommitted: number;
  unknownRolledBack: number;
  /** Commit of a notify → end of the first completed run that saw it, ms (the seed notifies left out). */
  notifyToRunMs: { p50: number; p99: number; max: number } | null;
  /** The five notifies that waited longest for their run, to investigate. */
  slowestNotifies: { namespace: string; identity: string; generation: string; at: string; ms: number }[];
}

/**
 * The condition for one matter to count as converged, as SQL over `dmm.dmm_matter` (alias-free):
 * run at its last generation (`observed_generation = generation`), no lease held, not parked,
 * and the cache holds `applied == value` (the last run applied the last notified value).
 */
const CONVERGED = `(observed_generation = generation and lease_owner is null and not parked
                   and (cache->'applied') = (cache->'value'))`;

/**
 * How many identities of each namespace converged (see {@link CONVERGED}), all namespaces read
 * in one statement, so one snapshot.
 */
export async function convergence(sql: postgres.Sql, namespaces: string[]): Promise<Record<string, { done: number; total: number }>> {
  const rows = await sql<{ namespace: string; done: number; total: number }[]>`
    select namespace,
           count(*) filter (where ${sql.unsafe(CONVERGED)})::int as done,
           count(*)::int as total
    from dmm.dmm_matter where namespace in ${sql(namespaces)} group by namespace`;
  return Object.fromEntries(namespaces.map((ns) => [ns, rows.find((r) => r.namespace === ns) ?? { done: 0, total: 0 }]));
}

/** A matter that has not converged, with what is needed to tell why. */
export interface UnconvergedMatter {
  namespace: string;
  identity: string;
  generation: string;
  observed: string;
  value: unknown;
  applied: unknown;
  parked: boolean;
  attempts: number;
  lastError: string | null;
  dueAt: string | null;
  dueReason: string | null;
  leaseOwner: string | null;
  leaseEpoch: string;
  leaseUntil: string | null;
  dispatchedAt: string | null;
  updatedAt: string;
  /** The matter's outbox row, if any, with every column (available_at, tries, bumps, the relay's in-flight mark, …). */
  outbox: unknown;
  /** The last committed notify of the identity (generation, value, at). */
  lastNotify: unknown;
  /** The last run the ledger recorded (token, epoch, generation, value, reason, slot, start, end). */
  lastRun: unknown;
  /** When this row was read (clock_timestamp()). */
  readAt: string;
}

/**
 * Every matter of `namespaces` that has not converged (up to `limit`), with its dmm row, outbox
 * row, last notify and last ledger run: what a reader needs to diagnose a lost wakeup.
 */
export async function unconvergedMatters(sql: postgres.Sql, namespaces: string[], limit = 20): Promise<UnconvergedMatter[]> {
  return sql<UnconvergedMatter[]>`
    select m.namespace, m.identity, m.generation::text, m.observed_generation::text as observed,
           m.cache->'value' as value, m.cache->'applied' as applied, m.parked, m.attempts, left(m.last_error, 300) as "lastError",
           m.due_at::text as "dueAt", m.due_reason as "dueReason", m.lease_owner as "leaseOwner", m.lease_epoch::text as "leaseEpoch",
           m.lease_until::text as "leaseUntil", m.dispatched_at::text as "dispatchedAt", m.updated_at::text as "updatedAt",
           (select json_agg(to_jsonb(o) - 'namespace' - 'kind' - 'identity')
              from dmm.dmm_outbox o where o.namespace = m.namespace and o.kind = m.kind and o.identity = m.identity) as outbox,
           (select json_build_object('generation', n.generation, 'value', n.value, 'at', n.at) from chaos.notify_log n
              where n.namespace = m.namespace and n.identity = m.identity order by n.generation desc limit 1) as "lastNotify",
           (select json_build_object('token', l.token, 'epoch', l.epoch, 'generation', l.generation, 'value', l.value, 'reason', l.reason,
                                     'slot', l.slot, 'pid', l.pid, 'started', l.started_at, 'ended', l.ended_at) from chaos.ledger l
              where l.namespace = m.namespace and l.identity = m.identity order by l.started_at desc limit 1) as "lastRun",
           clock_timestamp()::text as "readAt"
    from dmm.dmm_matter m
    where m.namespace in ${sql(namespaces)} and not ${sql.unsafe(CONVERGED)}
    order by m.namespace, m.identity
    limit ${limit}`;
}

/** Runs every check; see the module comment. */
export async function runChecks(
  sql: postgres.Sql,
  namespaces: string[],
  identities: number,
  notifies: NotifyRecord[],
): Promise<{ checks: CheckResult[]; figures: CheckFigures }> {
  const checks: CheckResult[] = [];
  const add = (name: string, rows: readonly unknown[]) => checks.push({ name, violations: rows.length, samples: [...rows.slice(0, 5)] });

  // 1. No two runs of one identity at once. Each run's interval runs from its fenced start
  // write to its fenced end write (just its start when it never ended: killed or lease lost).
  add(
    "overlap",
    await sql`
      with l as (
        select namespace, identity, token, epoch, slot, started_at as s, coalesce(ended_at, started_at) as e from chaos.ledger
        where namespace in ${sql(namespaces)}
      ), w as (
        select *, max(e) over (partition by namespace, identity order by s, token rows between unbounded preceding and 1 preceding) as prev_end
        from l
      )
      select namespace, identity, epoch, slot, s::text as started, prev_end::text as earlier_run_ended from w where s < prev_end`,
  );
  add(
    "epoch-order",
    await sql`
      select namespace, identity, epoch, prev_epoch from (
        select namespace, identity, epoch, lag(epoch) over (partition by namespace, identity order by started_at, token) as prev_epoch
        from chaos.ledger where namespace in ${sql(namespaces)}) x
      where epoch <= prev_epoch`,
  );

  // 2. Every committed notify (acknowledged or found committed after all) is followed by a
  // completed run that started after it and saw its generation or a later one.
  const followed = await sql<{ namespace: string; identity: string; generation: string; at: Date; started: Date | null; ended: Date | null }[]>`
    select n.namespace, n.identity, n.generation::text, n.at, f.started_at as started, f.ended_at as ended
    from chaos.notify_log n
    left join lateral (
      select l.started_at, l.ended_at from chaos.ledger l
      where l.namespace = n.namespace and l.identity = n.identity and l.ended_at is not null and l.generation >= n.generation
      order by l.started_at limit 1) f on true
    where n.namespace in ${sql(namespaces)}`;
  add(
    "notify-followed",
    followed.filter((f) => f.started === null || f.started <= f.at).map((f) => ({ ...f, at: f.at.toISOString(), started: f.started?.toISOString() ?? null })),
  );
  // Latency of the steady load only: generation 1 is the seed, notified before the workers ran.
  const lat = followed.filter((f) => f.ended && f.generation !== "1").map((f) => f.ended!.getTime() - f.at.getTime()).sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!;
  const notifyToRunMs = lat.length ? { p50: q(0.5), p99: q(0.99), max: lat[lat.length - 1]! } : null;
  const slowest = followed
    .filter((f) => f.ended && f.generation !== "1")
    .map((f) => ({ namespace: f.namespace, identity: f.identity, generation: f.generation, at: f.at.toISOString(), ms: f.ended!.getTime() - f.at.getTime() }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 5);

  // Always read the final state, even when the run's probe saw every identity converged: a
  // change after the probe (a late commit, a run after the probe) must show here.
  add("converged", await unconvergedMatters(sql, namespaces, 1_000));

  // 4. No cache save committed from a run that had lost its lease.
  add(
    "zombie-write",
    await sql`
      select w.namespace, w.identity, w.run_epoch::text, w.lease_epoch::text, w.run_owner, w.lease_owner, w.lease_until::text, w.tx_now::text,
             (l.token is null) as no_ledger, (l.ended_at is null) as not_ended
      from chaos.cache_writes w left join chaos.ledger l on l.token = w.token
      where w.namespace in ${sql(namespaces)}
        and (w.run_epoch is distinct from w.lease_epoch or w.run_owner is distinct from w.lease_owner
             or w.lease_until is null or w.lease_until <= w.tx_now
             or l.token is null or l.ended_at is null or l.epoch <> w.run_epoch)`,
  );
  add(
    "final-cache",
    await sql`
      with last as (
        select distinct on (namespace, identity) namespace, identity, token, epoch, value
        from chaos.ledger where ended_at is not null and namespace in ${sql(namespaces)}
        order by namespace, identity, epoch desc
      ), expected as (
        select distinct on (namespace, identity) namespace, identity, value, generation
        from chaos.notify_log where namespace in ${sql(namespaces)}
        order by namespace, identity, generation desc
      )
      select m.namespace, m.identity, m.cache, last.token as last_run, last.epoch::text as last_epoch, last.value::text as last_run_value,
             e.value::text as expected_value
      from dmm.dmm_matter m
      left join last on last.namespace = m.namespace and last.identity = m.identity
      left join expected e on e.namespace = m.namespace and e.identity = m.identity
      where m.namespace in ${sql(namespaces)}
        and (last.token is null or (m.cache->>'runToken')::uuid is distinct from last.token
             or (m.cache->>'runEpoch')::bigint is distinct from last.epoch
             or (m.cache->>'applied')::bigint is distinct from last.value
             or (m.cache->>'value')::bigint is distinct from e.value)`,
  );

  // 6. Nothing committed was lost, nothing rolled back happened.
  const logged = await sql<{ namespace: string; identity: string; value: string; generation: string }[]>`
    select namespace, identity, value::text, generation::text from chaos.notify_log where namespace in ${sql(namespaces)}`;
  const byValue = new Map<string, number>();
  for (const l of logged) byValue.set(`${l.namespace}\u0000${l.identity}\u0000${l.value}`, Number(l.generation));
  const lost: unknown[] = [];
  let unknownCommitted = 0;
  const rolledBack: NotifyRecord[] = [];
  for (const n of notifies) {
    const g = byValue.get(`${n.namespace}\u0000${n.identity}\u0000${n.value}`);
    if (n.outcome === "committed") {
      if (g === undefined || g !== n.generation) lost.push({ ...n, logged: g ?? null });
    } else if (g === undefined) rolledBack.push(n);
    else unknownCommitted++;
  }
  const integrity = await sql`
    with s as (
      select namespace, identity, count(*) as n, count(distinct generation) as d, min(generation) as lo, max(generation) as hi
      from chaos.notify_log where namespace in ${sql(namespaces)} group by namespace, identity
    )
    select coalesce(m.namespace, s.namespace) as namespace, coalesce(m.identity, s.identity) as identity,
           m.generation::text as matter_generation, s.n::text as logged, s.d::text as distinct_generations, s.lo::text, s.hi::text
    from (select * from dmm.dmm_matter where namespace in ${sql(namespaces)}) m
    full join s on s.namespace = m.namespace and s.identity = m.identity
    where s.n is null or m.generation is null or not (s.n = s.d and s.lo = 1 and s.hi = s.n and m.generation = s.hi)`;
  const [count] = await sql<{ n: number }[]>`select count(*)::int as n from dmm.dmm_matter where namespace in ${sql(namespaces)}`;
  const missing = count!.n === namespaces.length * identities ? [] : [{ matters: count!.n, expected: namespaces.length * identities }];
  add("lost-notify", [...lost, ...integrity, ...missing]);

  const seen = await sql<{ namespace: string; identity: string; value: string }[]>`
    select distinct namespace, identity, value::text from chaos.ledger where namespace in ${sql(namespaces)}`;
  const seenSet = new Set(seen.map((s) => `${s.namespace}\u0000${s.identity}\u0000${s.value}`));
  add(
    "half-done-notify",
    rolledBack.filter((n) => seenSet.has(`${n.namespace}\u0000${n.identity}\u0000${n.value}`)),
  );
  add(
    "torn-read",
    await sql`
      select l.namespace, l.identity, l.generation::text, l.value::text as run_saw, n.value::text as notified
      from chaos.ledger l left join chaos.notify_log n
        on n.namespace = l.namespace and n.identity = l.identity and n.generation = l.generation
      where l.namespace in ${sql(namespaces)} and (n.value is null or n.value <> l.value)`,
  );

  const [runs] = await sql<{ all: number; completed: number }[]>`
    select count(*)::int as all, count(ended_at)::int as completed from chaos.ledger where namespace in ${sql(namespaces)}`;
  const reasons = await sql<{ reason: string; n: number }[]>`
    select reason, count(*)::int as n from chaos.ledger where namespace in ${sql(namespaces)} group by reason order by reason`;
  const [saves] = await sql<{ n: number }[]>`select count(*)::int as n from chaos.cache_writes where namespace in ${sql(namespaces)}`;
  return {
    checks,
    figures: {
      ledgerRuns: runs!.all,
      completedRuns: runs!.completed,
      runsByReason: Object.fromEntries(reasons.map((r) => [r.reason, r.n])),
      cacheSaves: saves!.n,
      notifyLogRows: logged.length,
      unknownCommitted,
      unknownRolledBack: rolledBack.length,
      notifyToRunMs,
      slowestNotifies: slowest,
    },
  };
}

/** Thrown to roll the self-test's transaction back. */
class RollBack extends Error {}

/**
 * Proves the checks can fail: plants one violation of each kind into the record (and one
 * broken matter) inside a transaction, runs the checks there, and rolls everything back.
 * Returns the names of checks that stayed at zero, which would mean they are blind.
 */
export async function selfTest(sql: postgres.Sql, namespaces: string[], identities: number, notifies: NotifyRecord[]): Promise<string[]> {
  let blind: string[] = [];
  try {
    await sql.begin(async (tx) => {
      const [l] = await tx<{ namespace: string; identity: string; token: string; epoch: string; generation: string }[]>`
        select namespace, identity, token, epoch::text, generation::text from chaos.ledger
        where namespace in ${tx(namespaces)} and ended_at > started_at + interval '2 milliseconds'
        order by started_at desc limit 1`;
      if (!l) throw new Error("the record has no completed run to plant violations next to");
      // overlap (and epoch-order): a run inside the interval of a real one, with a foreign epoch.
      await tx`insert into chaos.ledger (token, namespace, identity, epoch, owner, generation, value, reason, attempt, pid, slot, started_at, ended_at)
               select gen_random_uuid(), namespace, identity, epoch + 1000000, 'planted', generation, value, 'planted', 1, 0, -1,
                      started_at + (ended_at - started_at) / 2, ended_at + interval '1 millisecond'
               from chaos.ledger where token = ${l.token}::uuid`;
      // epoch-order: the newest run of the identity, with the oldest epoch.
      await tx`insert into chaos.ledger (token, namespace, identity, epoch, owner, generation, value, reason, attempt, pid, slot, started_at)
               select gen_random_uuid(), namespace, identity, 0, 'planted', generation, value, 'planted', 1, 0, -1, clock_timestamp() + interval '1 hour'
               from chaos.ledger where token = ${l.token}::uuid`;
      // notify-followed (and lost-notify's generation count): a notify no run ever saw.
      await tx`insert into chaos.notify_log (namespace, identity, value, generation, at)
               values (${l.namespace}, ${l.identity}, 999999999, 999999999, clock_timestamp())`;
      // zombie-write: a committed save whose lease had moved on.
      await tx`insert into chaos.cache_writes (namespace, identity, token, run_epoch, run_owner, lease_epoch, lease_owner, lease_until, tx_now, at)
               values (${l.namespace}, ${l.identity}, ${l.token}::uuid, ${l.epoch}::bigint, 'planted', ${l.epoch}::bigint + 1, 'someone else', now(), now(), now())`;
      // converged and final-cache: a cache whose applied value no run saw.
      await tx`update dmm.dmm_matter set cache = jsonb_set(cache, '{applied}', '-1')
               where namespace = ${l.namespace} and identity = ${l.identity}`;
      // half-done-notify and torn-read: a run that saw the value of a notify that never committed.
      await tx`insert into chaos.ledger (token, namespace, identity, epoch, owner, generation, value, reason, attempt, pid, slot, started_at, ended_at)
               values (gen_random_uuid(), ${l.namespace}, ${l.identity}, 0, 'planted', ${l.generation}::bigint, 777777777, 'planted', 1, 0, -1,
                       '2000-01-01', '2000-01-01')`;
      const planted: NotifyRecord[] = [
        ...notifies,
        { namespace: l.namespace, identity: l.identity, value: 888888888, generation: 5, outcome: "committed", at: Date.now() },
        { namespace: l.namespace, identity: l.identity, value: 777777777, generation: null, outcome: "unknown", at: Date.now() },
      ];
      const { checks } = await runChecks(tx as unknown as postgres.Sql, namespaces, identities, planted);
      blind = checks.filter((c) => c.violations === 0).map((c) => c.name);
      throw new RollBack();
    });
  } catch (err) {
    if (!(err instanceof RollBack)) throw err;
  }
  return blind;
}
