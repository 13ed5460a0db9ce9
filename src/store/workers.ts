/**
 * Worker membership and leases: each worker process holds a session advisory lock on its own
 * key for as long as it lives, and extends the leases of its runs over that same session, so a
 * heartbeat that succeeds proves both that the worker is alive and that its lock is held.
 *
 * The session is a dedicated one-connection postgres.js client rather than a reserved
 * connection of the pool: postgres.js 3.4 can crash the process when a query is written to a
 * reserved connection whose socket closed (a Postgres restart), while a client simply
 * reconnects. A reconnect silently drops the advisory lock, so every heartbeat compares the
 * backend pid with the one that took the lock and reports the session lost when it changed.
 */
import { hostname } from "node:os";
import { randomInt } from "node:crypto";
import postgres from "postgres";
import { LOCK_CLASS } from "./migrate.js";
import { connectionOptions, pgArray } from "./db.js";

/** A live worker's session: the connection that holds its advisory lock. */
export interface WorkerSession {
  readonly id: string;
  /**
   * Extends the leases of `keys` held at their epochs; returns the keys whose lease is gone.
   * Throws `SessionLostError` when the session's connection (and so its lock) was lost.
   */
  heartbeat(keys: LeaseKey[], leaseMs: number): Promise<LeaseKey[]>;
  /** Forgets the worker and releases its lock and connection. */
  close(): Promise<void>;
}

/** One lease as the heartbeat sees it. */
export interface LeaseKey {
  kind: string;
  identity: string;
  epoch: number;
}

/** The worker's session connection was replaced or closed: its advisory lock is gone. */
export class SessionLostError extends Error {
  override name = "SessionLostError";
}

/**
 * Registers a worker: opens its session connection, takes the advisory lock on a fresh key and
 * records the worker in dmm_worker (lock first, row second, so no sweep ever sees the row
 * unlocked).
 */
export async function registerWorker(client: postgres.Sql, namespace: string, id: string): Promise<WorkerSession> {
  const conn = postgres(connectionOptions(client, { max: 1, max_lifetime: 0, idle_timeout: 0, applicationName: "dmm:session" }));
  let pid = 0;
  try {
    let key = 0;
    for (let i = 0; i < 10 && key === 0; i++) {
      const candidate = randomInt(2, 2 ** 31 - 1); // key 1 is the migration lock
      const [r] = await conn`select pg_try_advisory_lock(${LOCK_CLASS}, ${candidate}) as ok, pg_backend_pid() as pid`;
      if (r!.ok) {
        key = candidate;
        pid = r!.pid as number;
      }
    }
    if (key === 0) throw new Error("could not take a free advisory lock key after 10 tries");
    await conn`insert into dmm.dmm_worker (id, namespace, lock_key, host, pid)
               values (${id}, ${namespace}, ${key}, ${hostname()}, ${process.pid})`;
  } catch (err) {
    await conn.end({ timeout: 1 }).catch(() => {});
    throw err;
  }
  let closed = false;
  return {
    id,
    async heartbeat(keys, leaseMs) {
      const lost: LeaseKey[] = [];
      let backend = pid;
      // One statement per kind: keys go in as an array, so each is a primary-key lookup.
      const kinds = [...new Set(keys.map((k) => k.kind))].sort();
      for (const kind of kinds.length > 0 ? kinds : [""]) {
        const mine = keys.filter((k) => k.kind === kind);
        const [r] = await conn<{ pid: number; kept: string[] }[]>`
          with x as (
            select * from unnest(${pgArray(mine.map((k) => k.identity))}::text[], ${pgArray(mine.map((k) => k.epoch))}::bigint[]) as x(identity, epoch)
          ), locked as (
            select m.identity from (select identity from x order by identity collate "C") x
            cross join lateral (
              select m.identity from dmm.dmm_matter m
              where m.namespace = ${namespace} and m.kind = ${kind} and m.identity = x.identity
              limit 1 for update
            ) m
          ), kept as (
            update dmm.dmm_matter m set lease_until = now() + ${leaseMs}::int * interval '1 millisecond'
            from x
            where m.namespace = ${namespace} and m.kind = ${kind}
              and m.identity = any(array(select identity from locked)) and m.identity = x.identity
              and m.lease_owner = ${id} and m.lease_epoch = x.epoch and m.lease_until > now()
            returning m.identity
          )
          select pg_backend_pid() as pid, coalesce((select json_agg(identity) from kept), '[]') as kept`;
        backend = r!.pid;
        if (backend !== pid) break;
        const alive = new Set(r!.kept);
        for (const k of mine) if (!alive.has(k.identity)) lost.push(k);
      }
      if (backend !== pid) {
        throw new SessionLostError(`the session connection of worker ${id} was replaced (backend ${pid} → ${backend}); its advisory lock is gone`);
      }
      return lost;
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        const [r] = await conn`select pg_backend_pid() as pid`;
        // Only the session that holds the lock may speak for the worker.
        if (r!.pid === pid) await conn`delete from dmm.dmm_worker where id = ${id}`;
      } catch {
        /* the session is gone, and its lock with it; the sweep forgets the worker */
      } finally {
        await conn.end({ timeout: 1 }).catch(() => {});
      }
    },
  };
}
