/**
 * The two reads the CLI needs beyond the store's verbs: which namespaces and which kinds exist.
 * Typed Drizzle queries on the `dmm/schema` tables, exactly as an app would write them.
 */
import { asc, eq } from "drizzle-orm";
import type { PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { dmmMatter, dmmWorker } from "../schema/index.js";

/** Every namespace with at least one matter, sorted. */
export async function listNamespaces(db: PostgresJsDatabase): Promise<string[]> {
  const rows = await db.selectDistinct({ namespace: dmmMatter.namespace }).from(dmmMatter).orderBy(asc(dmmMatter.namespace));
  return rows.map((r) => r.namespace);
}

/** Every kind with at least one matter in `namespace`, sorted. */
export async function listKinds(db: PostgresJsDatabase, namespace: string): Promise<string[]> {
  const rows = await db
    .selectDistinct({ kind: dmmMatter.kind })
    .from(dmmMatter)
    .where(eq(dmmMatter.namespace, namespace))
    .orderBy(asc(dmmMatter.kind));
  return rows.map((r) => r.kind);
}

/** A registered worker process of a namespace (a dead one stays until a live worker reaps it). */
export interface WorkerRow {
  id: string;
  host: string;
  pid: number;
  startedAt: Date;
}

/** The registered workers of `namespace`, oldest first. */
export async function listWorkers(db: PostgresJsDatabase, namespace: string): Promise<WorkerRow[]> {
  return db
    .select({ id: dmmWorker.id, host: dmmWorker.host, pid: dmmWorker.pid, startedAt: dmmWorker.startedAt })
    .from(dmmWorker)
    .where(eq(dmmWorker.namespace, namespace))
    .orderBy(asc(dmmWorker.startedAt));
}
