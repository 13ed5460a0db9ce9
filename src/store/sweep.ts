/**
 * The sweep: the safety net that makes lost tokens, dead workers and missed timers harmless.
 * Every worker process runs it; SKIP LOCKED keeps them from colliding.
 */
import { sql } from "drizzle-orm";
import { rows, type Executor } from "./db.js";
import { CLAIMABLE } from "./claim.js";
import { LOCK_CLASS } from "./migrate.js";

/**
 * Puts claimable matters that nothing is dispatching back on the outbox: due retries,
 * requeues and resyncs; dirty matters whose token was lost; matters whose lease expired.
 * A matter dispatched within the last `graceMs` is left alone (its token may still be queued).
 * Returns how many matters it enqueued.
 */
export async function sweepMatters(exec: Executor, namespace: string, graceMs: number, limit: number): Promise<number> {
  const r = await rows<{ n: number }>(
    exec,
    sql`with c as (
          select m.ctid as row, m.kind, m.identity from dmm.dmm_matter m
          where m.namespace = ${namespace} and ${CLAIMABLE}
            and (m.dispatched_at is null or m.dispatched_at < now() - ${graceMs}::int * interval '1 millisecond')
            and not exists (select 1 from dmm.dmm_outbox o
                            where o.namespace = m.namespace and o.kind = m.kind and o.identity = m.identity)
          limit ${limit}::int
          for update of m skip locked
        ), stamp as (
          update dmm.dmm_matter m set dispatched_at = now() from c where m.namespace = ${namespace} and m.kind = c.kind and m.identity = c.identity
        ), ins as (
          insert into dmm.dmm_outbox (namespace, kind, identity)
          select ${namespace}::text, c.kind, c.identity from c order by c.kind, c.identity
          on conflict (namespace, kind, identity) do update set bumps = dmm.dmm_outbox.bumps + 1,
            available_at = least(dmm.dmm_outbox.available_at, now()), relay_until = null
          returning kind
        ), wake as (
          select pg_notify('dmm_outbox', ${namespace} || ':' || kind) from (select distinct kind from ins) k
        )
        select (select count(*)::int from ins) as n, (select count(*) from wake) as w`,
  );
  return r[0]?.n ?? 0;
}

/**
 * Finds workers of the namespace whose advisory lock is free (their process or connection is
 * gone), expires their leases so the matters are claimable at once (as `recovery` runs), puts
 * those matters on the outbox and forgets the workers. Returns the dead worker ids and the
 * matters they held, so the caller can claim those at once (with NATS dispatch their tokens
 * stay stuck with the dead consumer until JetStream's ack wait runs out).
 */
export async function reapDeadWorkers(
  exec: Executor,
  namespace: string,
): Promise<{ workers: string[]; matters: { kind: string; identity: string }[] }> {
  const dead = await rows<{ id: string }>(
    exec,
    sql`select w.id from dmm.dmm_worker w
        where w.namespace = ${namespace}
          and not exists (select 1 from pg_locks l
                          where l.locktype = 'advisory' and l.classid = ${LOCK_CLASS}::int::oid
                            and l.database = (select oid from pg_database where datname = current_database())
                            and l.objid = w.lock_key::oid and l.objsubid = 2 and l.granted)`,
  );
  if (dead.length === 0) return { workers: [], matters: [] };
  const ids = dead.map((d) => d.id);
  const r = await rows<{ kind: string; identity: string }>(
    exec,
    sql`with gone as (
          delete from dmm.dmm_worker where id in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))
          returning id
        ), held as (
          select m.ctid as row, m.kind, m.identity from dmm.dmm_matter m
          where m.namespace = ${namespace} and m.lease_owner in (select id from gone)
          order by m.kind, m.identity for update of m
        ), expired as (
          update dmm.dmm_matter m set lease_until = '-infinity'
          from held h where m.namespace = ${namespace} and m.kind = h.kind and m.identity = h.identity
          returning m.kind, m.identity
        ), ins as (
          insert into dmm.dmm_outbox (namespace, kind, identity)
          select ${namespace}::text, e.kind, e.identity from expired e order by e.kind, e.identity
          on conflict (namespace, kind, identity) do update set bumps = dmm.dmm_outbox.bumps + 1,
            available_at = least(dmm.dmm_outbox.available_at, now()), relay_until = null
          returning kind
        ), wake as (
          select pg_notify('dmm_outbox', ${namespace} || ':' || kind) from (select distinct kind from ins) k
        )
        select e.kind, e.identity, (select count(*) from wake) as w from expired e`,
  );
  return { workers: ids, matters: r.map((m) => ({ kind: m.kind, identity: m.identity })) };
}

/** Dead outbox tuples past which the sweep vacuums the outbox itself (autovacuum lagging or off). */
export const OUTBOX_VACUUM_DEAD_TUPLES = 50_000;

/**
 * Vacuums dmm's queue tables when their dead tuples pile up, and analyzes them when their
 * statistics are far behind: the outbox churns a few row versions per dispatch (a take that
 * steps over a long tail of dead index entries slows with every dispatch), and a matter table
 * that grew from nothing to millions needs fresh statistics for key lookups to be planned as
 * such. Normally autovacuum does both and this never fires; where autovacuum is off or far
 * behind, it does the job. Returns what it did. Needs ownership of the tables; without it, the
 * error is the caller's to log.
 */
export async function vacuumIfBloated(exec: Executor): Promise<string[]> {
  const stale = await rows<{ relname: string; vacuum: boolean; owned: boolean }>(
    exec,
    sql`select s.relname, s.n_dead_tup > greatest(${OUTBOX_VACUUM_DEAD_TUPLES}::int, s.n_live_tup) as vacuum,
               pg_has_role(current_user, c.relowner, 'MEMBER') as owned
        from pg_stat_user_tables s join pg_class c on c.oid = s.relid
        where s.schemaname = 'dmm' and s.relname in ('dmm_outbox', 'dmm_matter')
          and (s.n_dead_tup > greatest(${OUTBOX_VACUUM_DEAD_TUPLES}::int, s.n_live_tup)
               or s.n_mod_since_analyze > greatest(1000, s.n_live_tup / 2))`,
  );
  const foreign = stale.filter((t) => !t.owned).map((t) => t.relname);
  if (foreign.length > 0) {
    // Postgres would only warn and skip; say it plainly, once, to the caller.
    throw new Error(`${foreign.join(" and ")} need${foreign.length === 1 ? "s" : ""} vacuum or analyze, but ${foreign.length === 1 ? "it is" : "they are"} not owned by this role; enable autovacuum or run the maintenance as the migrating role`);
  }
  const done: string[] = [];
  for (const { relname, vacuum } of stale) {
    const table = relname === "dmm_outbox" ? sql.raw("dmm.dmm_outbox") : sql.raw("dmm.dmm_matter");
    await rows(exec, vacuum ? sql`vacuum (analyze) ${table}` : sql`analyze ${table}`);
    done.push(`${vacuum ? "vacuum" : "analyze"} ${relname}`);
  }
  return done;
}
