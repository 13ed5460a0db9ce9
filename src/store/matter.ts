/**
 * Reads of matters for `bucket.matter()`, `ctx.matter()` and `dmm status`: the cache and the
 * bookkeeping, with the derived state.
 */
import { sql } from "drizzle-orm";
import { rows, type Executor } from "./db.js";
import type { MatterState } from "../types.js";

/** A matter row as read, with its derived state. */
export interface MatterRow {
  namespace: string;
  kind: string;
  identity: string;
  cache: Record<string, unknown>;
  generation: number;
  observedGeneration: number;
  attempts: number;
  lastError: string | null;
  parked: boolean;
  dueAt: Date | null;
  dueReason: "retry" | "requeue" | "resync" | null;
  leaseOwner: string | null;
  leaseEpoch: number;
  leaseUntil: Date | null;
  createdAt: Date;
  updatedAt: Date;
  state: MatterState;
}

const COLUMNS = sql.raw(`namespace, kind, identity, cache, generation::text, observed_generation::text, attempts, last_error,
  parked, due_at, due_reason, lease_owner, lease_epoch::text, lease_until, created_at, updated_at,
  case when lease_owner is not null and lease_until > now() then 'running'
       when parked and generation = observed_generation then 'parked'
       when attempts > 0 then 'failing'
       when generation > observed_generation or due_at <= now() then 'pending'
       else 'ok' end as state`);

/** Reads one matter, or undefined. */
export async function readMatter(exec: Executor, namespace: string, kind: string, identity: string): Promise<MatterRow | undefined> {
  const r = await rows<Raw>(
    exec,
    sql`select ${COLUMNS} from dmm.dmm_matter where namespace = ${namespace} and kind = ${kind} and identity = ${identity}`,
  );
  return r[0] ? toRow(r[0]) : undefined;
}

/** Lists matters of a namespace (optionally one kind), ordered by kind and identity. */
export async function listMatters(
  exec: Executor,
  namespace: string,
  opts: { kind?: string; limit?: number } = {},
): Promise<MatterRow[]> {
  const r = await rows<Raw>(
    exec,
    sql`select ${COLUMNS} from dmm.dmm_matter
        where namespace = ${namespace} ${opts.kind ? sql`and kind = ${opts.kind}` : sql``}
        order by kind, identity limit ${opts.limit ?? 1000}::int`,
  );
  return r.map(toRow);
}

type Raw = Record<string, unknown>;

function toRow(r: Raw): MatterRow {
  return {
    namespace: r.namespace as string,
    kind: r.kind as string,
    identity: r.identity as string,
    cache: (r.cache ?? {}) as Record<string, unknown>,
    generation: Number(r.generation),
    observedGeneration: Number(r.observed_generation),
    attempts: r.attempts as number,
    lastError: (r.last_error as string | null) ?? null,
    parked: r.parked as boolean,
    dueAt: toDate(r.due_at),
    dueReason: (r.due_reason as MatterRow["dueReason"]) ?? null,
    leaseOwner: (r.lease_owner as string | null) ?? null,
    leaseEpoch: Number(r.lease_epoch),
    leaseUntil: toDate(r.lease_until),
    createdAt: toDate(r.created_at)!,
    updatedAt: toDate(r.updated_at)!,
    state: r.state as MatterState,
  };
}

function toDate(v: unknown): Date | null {
  if (v === null || v === undefined) return null;
  return v instanceof Date ? v : new Date(String(v));
}
