/**
 * Worker membership and leases: each worker process holds a session advisory lock on its own
 * key for as long as it lives, and extends the leases of its runs over that same session, so a
 * heartbeat that succeeds proves both that the worker is alive and that its lock is held.
 */
import { hostname } from "node:os";
import { randomInt } from "node:crypto";
import type postgres from "postgres";
import { LOCK_CLASS } from "./migrate.js";

/** A live worker's session: the reserved connection that holds its advisory lock. */
export interface WorkerSession {
  readonly id: string;
  /** Extends the leases of `keys` held at `epoch`; returns the keys whose lease is gone. */
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

/**
 * Registers a worker: reserves a connection, takes the advisory lock on a fresh key and records
 * the worker in dmm_worker (lock first, row second, so no sweep ever sees the row unlocked).
 */
export async function registerWorker(client: postgres.Sql, namespace: string, id: string): Promise<WorkerSession> {
  const conn = await client.reserve();
  try {
    let key = 0;
    for (let i = 0; i < 10 && key === 0; i++) {
      const candidate = randomInt(1, 2 ** 31 - 1);
      const r = await conn`select pg_try_advisory_lock(${LOCK_CLASS}, ${candidate}) as ok`;
      if (r[0]!.ok) key = candidate;
    }
    if (key === 0) throw new Error("could not take a free advisory lock key after 10 tries");
    await conn`insert into dmm.dmm_worker (id, namespace, lock_key, host, pid)
               values (${id}, ${namespace}, ${key}, ${hostname()}, ${process.pid})`;
  } catch (err) {
    conn.release();
    throw err;
  }
  let closed = false;
  return {
    id,
    async heartbeat(keys, leaseMs) {
      // Runs even with no keys: a failing query here means the lock session is gone.
      // postgres.js directly: Drizzle cannot wrap a reserved connection.
      const list = JSON.stringify(keys.map((k, ord) => ({ ord, ...k })));
      const kept = await conn<{ ord: number }[]>`
        with x as (
          select * from jsonb_to_recordset(${list}::jsonb) as x(ord int, kind text, identity text, epoch bigint)
        ), locked as (
          select x.ord from dmm.dmm_matter m join x
            on m.namespace = ${namespace} and m.kind = x.kind and m.identity = x.identity
          order by m.kind, m.identity for update of m
        )
        update dmm.dmm_matter m set lease_until = now() + ${leaseMs}::int * interval '1 millisecond'
        from x join locked l on l.ord = x.ord
        where m.namespace = ${namespace} and m.kind = x.kind and m.identity = x.identity
          and m.lease_owner = ${id} and m.lease_epoch = x.epoch and m.lease_until > now()
        returning x.ord`;
      const alive = new Set(kept.map((k) => k.ord));
      return keys.filter((_, i) => !alive.has(i));
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        await conn`delete from dmm.dmm_worker where id = ${id}`;
        await conn`select pg_advisory_unlock_all()`;
      } catch {
        /* the session may already be gone; its lock went with it */
      } finally {
        conn.release();
      }
    },
  };
}
